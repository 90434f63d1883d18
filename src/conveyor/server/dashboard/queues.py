"""Queues: each one's counts and rates, pause and resume, and the leases held now."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from conveyor.server import audit
from conveyor.server.auth import Principal, Role
from conveyor.server.dashboard.render import Dashboard, back_to

LEASES = 100


def routes(dashboard: Dashboard) -> APIRouter:
    ui = APIRouter()
    Reader = Annotated[Principal, Depends(dashboard.auth.require(Role.READ))]
    Operator = Annotated[Principal, Depends(dashboard.auth.require(Role.OPERATE))]
    Text = Annotated[str, Query(max_length=200)]

    @ui.get("/queues", response_class=HTMLResponse)
    async def queue_list(
        request: Request, principal: Reader, queue: Text = "", after: Text = "", done: Text = ""
    ) -> HTMLResponse:
        app = await dashboard.app()
        leases = await app.queues.leases(queue or None, limit=LEASES, after=after or None)
        context = {
            "queues": await app.queues.metrics(),
            "leases": leases,
            "more_leases": None if len(leases) < LEASES else leases[-1].job_id,
            "queue": queue,
            "now": app.clock.now(),
            "done": done,
        }
        return dashboard.page(request, principal, "queues.html", context)

    @ui.post("/queues/{queue}/{change}")
    async def pause_or_resume(
        request: Request,
        principal: Operator,
        queue: Annotated[str, Path(max_length=200)],
        change: Literal["pause", "resume"],
    ) -> RedirectResponse:
        app = await dashboard.app()
        if change == "pause":
            changed = await app.queues.pause(queue)
        else:
            changed = await app.queues.resume(queue)
        audit.record(principal, change, f"queue:{queue}", changed=changed, via="dashboard")
        outcome = {"pause": "paused", "resume": "resumed"}[change] if changed else f"already {change}d"
        return back_to(request, "/queues", done=f"{queue} {outcome}")

    return ui
