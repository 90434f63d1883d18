"""The HTTP API's routes: commands, producing, workflows, queues, jobs, dead letters, workers,
health and metrics. Every route answers errors as problem+json (:mod:`conveyor.server.problems`);
what each role may call is in :mod:`conveyor.server.auth`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name
# dependencies local to router().

import base64
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from conveyor.app import App
from conveyor.definitions.service import Command
from conveyor.model.errors import ConveyorError, UnknownNameError
from conveyor.operations.graph import build_graph
from conveyor.operations.jobs import CancelOutcome, JobView
from conveyor.operations.queues import QueueMetrics
from conveyor.operations.status import State
from conveyor.ports import LeaseInfo, MinuteCounts, WorkerInfo
from conveyor.runtime import producer
from conveyor.server import audit
from conveyor.server.auth import Auth, Principal, Role
from conveyor.server.connection import Connection
from conveyor.server.problems import Problem, ProblemDetails
from conveyor.server.schemas import (
    Changed,
    Count,
    Created,
    DeadLetterPage,
    DeadLetterSelection,
    DeadLetterView,
    Decision,
    EmitRequest,
    EnqueueRequest,
    HealthView,
    WorkflowPage,
    WorkflowView,
)

PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemDetails, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 422, 503)
}
"""The error answers every route may give, for the OpenAPI document."""

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="the same key again returns the first request's id and stores nothing",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]
QueueName = Annotated[str, Path(min_length=1, max_length=200)]


def _dead_letter_where(
    queue: Annotated[str | None, Query(max_length=200)] = None,
    error_type: Annotated[str | None, Query(max_length=500)] = None,
    since: Annotated[float | None, Query(description="failed at or after")] = None,
    until: Annotated[float | None, Query(description="failed before")] = None,
    text: Annotated[str | None, Query(max_length=1000, description="in the error message")] = None,
) -> dict[str, Any]:
    """The dead-letter filter of a query string, as ``app.dead_letters(**where)`` takes it."""
    return {"queue": queue, "error_type": error_type, "since": since, "until": until, "text": text}


DeadLetterWhere = Annotated[dict[str, Any], Depends(_dead_letter_where)]


def _cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode()


def _uncursor(cursor: str | None, what: str) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        at, key = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(at), str(key)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise Problem(400, "Bad Request", f"{what} is not a cursor this API gave") from exc


def router(connection: Connection, auth: Auth) -> APIRouter:
    """The API's routes over ``connection``'s App."""
    api = APIRouter(responses=PROBLEMS)
    reader = Depends(auth.require(Role.READ))
    operator = auth.require(Role.OPERATE)
    admin = auth.require(Role.ADMIN)

    async def conveyor() -> App:
        return await connection.ensure()

    AppDep = Annotated[App, Depends(conveyor)]
    Operator = Annotated[Principal, Depends(operator)]
    Admin = Annotated[Principal, Depends(admin)]

    # health and metrics (no token: probes and scrapers)

    @api.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/health/ready",
        tags=["health"],
        summary="The backend answers (503 when it does not)",
        response_model=HealthView,
        responses={503: {"model": HealthView}},
    )
    async def ready(response: Response) -> HealthView:
        try:
            app = await connection.ensure()
            report = await app.health()
        except (ConveyorError, OSError) as exc:
            response.status_code = 503
            return HealthView(status="fail", problems=[f"backend unreachable: {type(exc).__name__}: {exc}"])
        if report.status == "fail":
            response.status_code = 503
        return HealthView(**dataclasses.asdict(report))

    @api.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
        except ImportError as exc:
            raise Problem(
                404, "Not Found", "metrics need the otel extra: pip install 'conveyor[otel]'"
            ) from exc
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # commands

    async def invoke(app: App, name: str, payload: Any, principal: Principal) -> Any:
        result = await app.invoke(name, payload)
        audit.record(principal, "invoke", f"command:{name}")
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result

    for command in connection.app.registry.commands.values():
        _add_command(api, command, invoke, conveyor, admin)

    @api.post("/commands/{name}", tags=["commands"], summary="Run a command (any declared name)")
    async def run_command(
        name: Annotated[str, Path(max_length=200)],
        app: AppDep,
        principal: Admin,
        payload: Annotated[Any, Body()] = None,
    ) -> Any:
        return await invoke(app, name, payload, principal)

    # producing

    @api.post(
        "/queues/{queue}/jobs",
        tags=["jobs"],
        summary="Enqueue a job",
        status_code=201,
        response_model=Created,
    )
    async def enqueue(
        queue: QueueName,
        request: EnqueueRequest,
        app: AppDep,
        principal: Admin,
        idempotency_key: IdempotencyKey = None,
    ) -> Created:
        job_id = await app.enqueue(
            queue,
            request.payload,
            delay=request.delay,
            run_at=request.run_at,
            idempotency_key=idempotency_key,
            correlation_id=request.correlation_id,
            priority=request.priority,
            max_attempts=request.max_attempts,
            visibility_timeout=request.visibility_timeout,
        )
        audit.record(principal, "enqueue", f"queue:{queue}", job=job_id)
        return Created(id=job_id)

    @api.post(
        "/events/{event}",
        tags=["events"],
        summary="Emit an event",
        status_code=201,
        response_model=Created,
        responses={200: {"model": Created, "description": "the Idempotency-Key was used: nothing emitted"}},
    )
    async def emit(
        event: Annotated[str, Path(min_length=1, max_length=200)],
        request: EmitRequest,
        app: AppDep,
        principal: Admin,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> Created:
        declared = app.registry.declared_events()
        if event not in declared:
            raise UnknownNameError.among("event", event, declared, " (no subscription or emits names it)")
        event_id, first = await producer.emit(
            app.runtime,
            event,
            request.payload,
            correlation_id=request.correlation_id,
            connection=None,
            idempotency_key=idempotency_key,
        )
        if not first:
            response.status_code = 200
            return Created(id=event_id, replayed=True)
        audit.record(principal, "emit", f"event:{event}", id=event_id)
        return Created(id=event_id)

    # workflows

    @api.get("/workflows", tags=["workflows"], response_model=WorkflowPage, dependencies=[reader])
    async def workflows(
        app: AppDep,
        state: State | None = None,
        workflow: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[float | None, Query(description="started at or after")] = None,
        until: Annotated[float | None, Query(description="started before")] = None,
        prefix: Annotated[str | None, Query(max_length=200, description="correlation id prefix")] = None,
        step: Annotated[str | None, Query(max_length=200, description="a queue it has a job open on")] = None,
        dead_letters: Annotated[bool | None, Query(description="has dead-lettered steps")] = None,
        schedules: Annotated[bool, Query(description="include schedule ticks' instances")] = False,
        limit: Limit = 50,
        before: Annotated[str | None, Query(max_length=2000)] = None,
    ) -> WorkflowPage:
        page = await app.workflows.page(
            limit=limit,
            before=_uncursor(before, "before"),
            state=state,
            workflow=workflow,
            since=since,
            until=until,
            prefix=prefix,
            step=step,
            dead_letters=dead_letters,
            schedules=schedules,
        )
        return WorkflowPage(
            items=[WorkflowView.of(s, full=False) for s in page.items],
            next=None if page.next is None else _cursor(list(page.next)),
            scanned=page.scanned,
        )

    @api.get("/workflows/{instance}", tags=["workflows"], response_model=WorkflowView, dependencies=[reader])
    async def workflow_status(instance: Annotated[str, Path(max_length=1000)], app: AppDep) -> WorkflowView:
        status = await app.workflows.status(instance)
        if status.state == "unknown":
            raise Problem(404, "Not Found", f"no workflow instance {instance!r} in the history")
        return WorkflowView.of(status)

    @api.post(
        "/workflows/{instance}/approvals/{gate}",
        tags=["workflows"],
        summary="Approve or reject a pending approval gate",
        response_model=Created,
    )
    async def decide(
        instance: Annotated[str, Path(max_length=1000)],
        gate: Annotated[str, Path(max_length=200)],
        decision: Decision,
        app: AppDep,
        principal: Operator,
    ) -> Created:
        event_id = await app.workflows.decide(
            instance, gate, approve=decision.approve, note=decision.note, by=principal.name
        )
        verdict = "approve" if decision.approve else "reject"
        audit.record(principal, verdict, f"workflow:{instance}", gate=gate)
        return Created(id=event_id)

    @api.get(
        "/graph",
        tags=["workflows"],
        summary="The workflow graph (Mermaid)",
        dependencies=[reader],
        response_class=PlainTextResponse,
    )
    async def graph(app: AppDep) -> PlainTextResponse:
        return PlainTextResponse(build_graph(app.registry, app.workflows.declared).mermaid)

    # queues

    @api.get("/queues", tags=["queues"], response_model=list[QueueMetrics], dependencies=[reader])
    async def queues(app: AppDep) -> list[QueueMetrics]:
        return await app.queues.metrics()

    @api.get("/queues/{queue}", tags=["queues"], response_model=QueueMetrics, dependencies=[reader])
    async def queue_metrics(queue: QueueName, app: AppDep) -> QueueMetrics:
        if queue not in await app.queues.names():
            raise Problem(404, "Not Found", f"no queue {queue!r} is declared or holds jobs")
        [found] = await app.queues.metrics([queue])
        return found

    @api.get(
        "/queues/{queue}/throughput",
        tags=["queues"],
        response_model=list[MinuteCounts],
        dependencies=[reader],
    )
    async def throughput(
        queue: QueueName, app: AppDep, minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 60
    ) -> list[MinuteCounts]:
        return await app.queues.throughput([queue], since=app.clock.now() - minutes * 60)

    @api.post("/queues/{queue}/pause", tags=["queues"], response_model=Changed)
    async def pause(queue: QueueName, app: AppDep, principal: Operator) -> Changed:
        changed = await app.queues.pause(queue)
        audit.record(principal, "pause", f"queue:{queue}", changed=changed)
        return Changed(changed=changed)

    @api.post("/queues/{queue}/resume", tags=["queues"], response_model=Changed)
    async def resume(queue: QueueName, app: AppDep, principal: Operator) -> Changed:
        changed = await app.queues.resume(queue)
        audit.record(principal, "resume", f"queue:{queue}", changed=changed)
        return Changed(changed=changed)

    @api.get("/leases", tags=["queues"], response_model=list[LeaseInfo], dependencies=[reader])
    async def leases(
        app: AppDep,
        queue: Annotated[str | None, Query(max_length=200)] = None,
        limit: Limit = 100,
        after: Annotated[
            str | None, Query(max_length=1000, description="the last job id of the page before")
        ] = None,
    ) -> list[LeaseInfo]:
        return await app.queues.leases(queue, limit=limit, after=after)

    @api.get("/workers", tags=["queues"], response_model=list[WorkerInfo], dependencies=[reader])
    async def workers(app: AppDep) -> list[WorkerInfo]:
        return await app.workers()

    # jobs

    @api.get("/jobs/{job_id}", tags=["jobs"], response_model=JobView, dependencies=[reader])
    async def job(job_id: Annotated[str, Path(max_length=1000)], app: AppDep) -> JobView:
        found = await app.jobs.get(job_id)
        if found is None:
            raise Problem(404, "Not Found", f"no job {job_id!r}: not live, not dead, not in the history")
        return found

    @api.get("/queues/{queue}/keys/{key}", tags=["jobs"], response_model=JobView, dependencies=[reader])
    async def job_by_key(
        queue: QueueName, key: Annotated[str, Path(max_length=1000)], app: AppDep
    ) -> JobView:
        found = await app.jobs.by_key(queue, key)
        if found is None:
            raise Problem(404, "Not Found", f"no job of {queue!r} holds the idempotency key {key!r}")
        return found

    @api.post("/jobs/{job_id}/cancel", tags=["jobs"], response_model=dict[str, CancelOutcome])
    async def cancel(
        job_id: Annotated[str, Path(max_length=1000)], app: AppDep, principal: Operator
    ) -> dict[str, CancelOutcome]:
        outcome = await app.jobs.cancel(job_id, by=principal.name)
        if outcome is CancelOutcome.NOT_FOUND:
            raise Problem(404, "Not Found", f"no live job {job_id!r}")
        audit.record(principal, "cancel", f"job:{job_id}", outcome=outcome.value)
        return {"outcome": outcome}

    # dead letters

    @api.get("/dead-letters", tags=["dead letters"], response_model=DeadLetterPage, dependencies=[reader])
    async def dead_letters(
        app: AppDep,
        where: DeadLetterWhere,
        limit: Limit = 50,
        before: Annotated[str | None, Query(max_length=2000)] = None,
    ) -> DeadLetterPage:
        found = await app.dead_letters(**where).page(limit, _uncursor(before, "before"))
        last = found[-1] if len(found) == limit else None
        return DeadLetterPage(
            items=[DeadLetterView.of(d, full=False) for d in found],
            next=None if last is None else _cursor([last.failed_at, last.id]),
        )

    @api.get("/dead-letters/count", tags=["dead letters"], response_model=Count, dependencies=[reader])
    async def count_dead_letters(app: AppDep, where: DeadLetterWhere) -> Count:
        return Count(count=await app.dead_letters(**where).count())

    @api.get(
        "/dead-letters/{dead_id}", tags=["dead letters"], response_model=DeadLetterView, dependencies=[reader]
    )
    async def dead_letter(dead_id: Annotated[str, Path(max_length=1000)], app: AppDep) -> DeadLetterView:
        found = await app.dead_letters().get(dead_id)
        if found is None:
            raise Problem(404, "Not Found", f"no dead letter {dead_id!r}")
        return DeadLetterView.of(found)

    def selected(app: App, selection: DeadLetterSelection) -> Any:
        filtered = any(
            v is not None
            for v in (selection.queue, selection.error_type, selection.since, selection.until, selection.text)
        )
        if selection.ids is None and not filtered and not selection.all:
            raise Problem(
                422,
                "Unprocessable Content",
                "give ids, a filter, or all=true to act on every dead letter",
            )
        return app.dead_letters(
            selection.queue,
            error_type=selection.error_type,
            since=selection.since,
            until=selection.until,
            text=selection.text,
        )

    @api.post("/dead-letters/redrive", tags=["dead letters"], response_model=Count)
    async def redrive(selection: DeadLetterSelection, app: AppDep, principal: Operator) -> Count:
        count = await selected(app, selection).redrive(selection.ids, delay=selection.delay)
        audit.record(principal, "redrive", "dead-letters", count=count, **_described(selection))
        return Count(count=count)

    @api.post("/dead-letters/purge", tags=["dead letters"], response_model=Count)
    async def purge(selection: DeadLetterSelection, app: AppDep, principal: Admin) -> Count:
        count = await selected(app, selection).purge(selection.ids)
        audit.record(principal, "purge", "dead-letters", count=count, **_described(selection))
        return Count(count=count)

    return api


def _described(selection: DeadLetterSelection) -> dict[str, Any]:
    return selection.model_dump(exclude_none=True, exclude_defaults=True)


def _add_command(
    api: APIRouter,
    command: Command,
    invoke: Callable[[App, str, Any, Principal], Awaitable[Any]],
    conveyor: Callable[[], Awaitable[App]],
    admin: Callable[[Request], Awaitable[Principal]],
) -> None:
    """``POST /commands/<name>``, its body and answer typed by the command's own models."""
    name = command.name
    payload_model: Any = command.payload if command.payload is not None else Any
    result_model: Any = command.result if command.result is not None else Any

    async def endpoint(
        app: Annotated[App, Depends(conveyor)],
        principal: Annotated[Principal, Depends(admin)],
        payload: Annotated[payload_model, Body()] = None,
    ) -> Any:
        return await invoke(app, name, payload, principal)

    api.add_api_route(
        f"/commands/{name}",
        endpoint,
        methods=["POST"],
        tags=["commands"],
        summary=command.description.strip().splitlines()[0] if command.description.strip() else name,
        response_model=result_model,
        name=f"command_{name}",
    )
