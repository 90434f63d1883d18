"""The overview: every queue's depth, in flight and dead, the last hour's throughput, the workers
alive; kept live by the stream of :mod:`conveyor.server.dashboard.events`."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from conveyor.app import App
from conveyor.server.auth import Principal, Role
from conveyor.server.dashboard.chart import MINUTES, throughput
from conveyor.server.dashboard.render import Dashboard


async def overview(app: App) -> dict[str, Any]:
    """What the overview shows, now."""
    now = app.clock.now()
    metrics = await app.queues.metrics()
    return {
        "now": now,
        "queues": metrics,
        "totals": {
            "ready": sum(q.ready for q in metrics),
            "scheduled": sum(q.scheduled for q in metrics),
            "in_flight": sum(q.in_flight for q in metrics),
            "dead": sum(q.dead for q in metrics),
        },
        "chart": throughput(await app.queues.throughput(since=now - MINUTES * 60), now),
        "workers": await app.workers(),
    }


def routes(dashboard: Dashboard) -> APIRouter:
    ui = APIRouter()
    Reader = Annotated[Principal, Depends(dashboard.auth.require(Role.READ))]

    @ui.get("/", response_class=HTMLResponse)
    async def overview_page(request: Request, principal: Reader) -> HTMLResponse:
        context = await overview(await dashboard.app())
        return dashboard.page(request, principal, "overview.html", context)

    return ui
