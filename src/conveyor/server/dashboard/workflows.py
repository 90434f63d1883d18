"""Workflows: the filtered, keyset-paged list of instances; one instance's timeline, its graph with
the path it took, and its pending approvals to decide."""

import datetime as dt
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from conveyor.app import App
from conveyor.operations.graph import edges, nodes
from conveyor.operations.status import State, WorkflowStatus
from conveyor.server import audit
from conveyor.server.auth import Principal, Role
from conveyor.server.dashboard.graph import Node, layout
from conveyor.server.dashboard.render import Dashboard, back_to
from conveyor.server.problems import Problem
from conveyor.server.schemas import WorkflowView

STATES: tuple[str, ...] = tuple(s for s in get_args(State) if s != "unknown")
RANGES = {"15m": 15 * 60, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
"""The list's "started within" choices, in seconds."""
PAGE = 50

Text = Annotated[str, Query(max_length=200)]


def moment(text: str, what: str) -> float | None:
    """An ISO 8601 date or time from a filter field as a timestamp (UTC unless it says otherwise)."""
    if not text.strip():
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Problem(422, "Unprocessable Content", f"{what}: {text!r} is not an ISO 8601 time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def cursor(at: float, key: str) -> str:
    """A keyset position for an "older" link: ``<timestamp>~<id>``."""
    return f"{at!r}~{key}"


def uncursor(text: str) -> tuple[float, str] | None:
    if not text:
        return None
    at, sep, key = text.partition("~")
    try:
        if not sep:
            raise ValueError(text)
        return float(at), key
    except ValueError:
        raise Problem(400, "Bad Request", f"{text!r} is not a position this dashboard gave") from None


def _visited(app: App, status: WorkflowStatus) -> tuple[set[Node], set[Node]]:
    """The graph's nodes the instance went through, and the queues where it was dead-lettered."""
    visited: set[Node] = {("queue", step.queue) for step in status.steps}
    visited |= {("event", event) for event in status.events}
    if status.events:  # the command that started it, when one emits its first event
        visited |= {
            e.source
            for e in edges(app.registry)
            if e.source[0] == "command" and e.target == ("event", status.events[0])
        }
    dead = {("queue", step.queue) for step in status.steps if step.state == "dead_lettered"}
    return visited, dead


async def instance(app: App, instance_id: str) -> dict[str, Any]:
    """What the instance page shows, now."""
    status = await app.workflows.status(instance_id)
    if status.state == "unknown":
        raise Problem(404, "Not Found", f"no workflow instance {instance_id!r} in the history")
    visited, dead = _visited(app, status)
    view = WorkflowView.of(status)
    ran: dict[str, float] = {}  # each step's attempts' running time, from their history entries
    for entry in view.history:
        if entry.message_id is not None and isinstance(entry.detail, dict):
            spent = entry.detail.get("duration")
            if isinstance(spent, int | float):
                ran[entry.message_id] = ran.get(entry.message_id, 0.0) + spent
    return {
        "status": view,
        "ran": ran,
        "graph": layout(
            edges(app.registry),
            nodes=nodes(app.registry),
            visited=visited,
            dead=dead,
        ),
        "now": app.clock.now(),
    }


def routes(dashboard: Dashboard) -> APIRouter:
    ui = APIRouter()
    Reader = Annotated[Principal, Depends(dashboard.auth.require(Role.READ))]
    Operator = Annotated[Principal, Depends(dashboard.auth.require(Role.OPERATE))]

    @ui.get("/workflows", response_class=HTMLResponse)
    async def workflow_list(
        request: Request,
        principal: Reader,
        state: Text = "",
        workflow: Text = "",
        prefix: Text = "",
        step: Text = "",
        dead: Literal["", "yes", "no"] = "",
        within: Literal["", "15m", "1h", "24h", "7d"] = "",
        since: Text = "",
        until: Text = "",
        before: Annotated[str, Query(max_length=2000)] = "",
        limit: Annotated[int, Query(ge=1, le=500)] = PAGE,
    ) -> HTMLResponse:
        app = await dashboard.app()
        if state and state not in STATES:
            raise Problem(422, "Unprocessable Content", f"state must be one of {', '.join(STATES)}")
        start = moment(since, "since")
        if within:
            start = max(start or 0.0, app.clock.now() - RANGES[within])
        page = await app.workflows.page(
            limit=limit,
            before=uncursor(before),
            state=state or None,  # type: ignore[arg-type]  # checked against STATES above
            workflow=workflow or None,
            since=start,
            until=moment(until, "until"),
            prefix=prefix or None,
            step=step or None,
            dead_letters=None if not dead else dead == "yes",
        )
        filters = {
            "state": state,
            "workflow": workflow,
            "prefix": prefix,
            "step": step,
            "dead": dead,
            "within": within,
            "since": since,
            "until": until,
            **({"limit": str(limit)} if limit != PAGE else {}),
        }
        context = {
            "items": page.items,
            "older": None if page.next is None else cursor(*page.next),
            "scanned": page.scanned,
            "filters": filters,
            "filtered": any(filters.values()),
            "states": STATES,
            "ranges": list(RANGES),
            "workflows": [w.name for w in app.workflows.declared],
            "queues": sorted(app.registry.known_queues),
            "first_page": not before,
        }
        return dashboard.page(request, principal, "workflows.html", context)

    @ui.get("/workflows/{instance_id:path}", response_class=HTMLResponse)
    async def workflow_page(
        request: Request,
        principal: Reader,
        instance_id: Annotated[str, Path(max_length=1000)],
        done: Text = "",
    ) -> HTMLResponse:
        context = await instance(await dashboard.app(), instance_id)
        return dashboard.page(request, principal, "workflow.html", {**context, "done": done})

    @ui.post("/workflows/{instance_id:path}/approvals/{gate}")
    async def decide(
        request: Request,
        principal: Operator,
        instance_id: Annotated[str, Path(max_length=1000)],
        gate: Annotated[str, Path(max_length=200)],
        decision: Annotated[Literal["approve", "reject"], Form()],
        note: Annotated[str, Form(max_length=10_000)] = "",
    ) -> RedirectResponse:
        app = await dashboard.app()
        approve = decision == "approve"
        await app.workflows.decide(instance_id, gate, approve=approve, note=note or None, by=principal.name)
        audit.record(principal, decision, f"workflow:{instance_id}", gate=gate, via="dashboard")
        verdict = "approved" if approve else "rejected"
        return back_to(request, f"/workflows/{instance_id}", done=f"{gate} {verdict}")

    return ui
