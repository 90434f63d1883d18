"""The HTTP API's request and response bodies (pydantic: they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from conveyor.model.envelope import Envelope
from conveyor.operations.status import WorkflowStatus
from conveyor.ports import DeadLetter, ErrorInfo, HistoryEntry

Timestamp = float
"""Seconds since the Unix epoch (UTC), as every time in the API."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Created(BaseModel):
    id: str
    replayed: bool = False
    """True when the Idempotency-Key had been used: ``id`` is the first request's."""


class EnqueueRequest(Strict):
    payload: Any = None
    delay: float | None = Field(None, ge=0, le=10 * 365 * 86400, description="seconds from now")
    run_at: Timestamp | None = Field(None, ge=0, le=1e11)
    correlation_id: str | None = Field(None, min_length=1, max_length=1000)
    priority: int = Field(0, ge=-10, le=10)
    max_attempts: int | None = Field(None, ge=1, le=10_000)
    visibility_timeout: float | None = Field(None, gt=0, le=7 * 86400)


class EmitRequest(Strict):
    payload: Any = None
    correlation_id: str | None = Field(None, min_length=1, max_length=1000)


class Decision(Strict):
    approve: bool
    note: str | None = Field(None, max_length=10_000)


class DeadLetterSelection(Strict):
    """Either ``ids``, or every dead letter matching the filter fields (all dead letters of
    ``queue``, or of every queue, when no field is given and ``all`` is true)."""

    ids: list[str] | None = Field(None, max_length=10_000)
    queue: str | None = None
    error_type: str | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    text: str | None = None
    all: bool = False
    """Needed to act on every dead letter with no filter at all (a guard against an empty body)."""
    delay: float | None = Field(None, ge=0, le=10 * 365 * 86400, description="redrive: seconds from now")


class Count(BaseModel):
    count: int


class Changed(BaseModel):
    changed: bool
    """False when nothing had to change (paused already, not paused)."""


class ErrorView(BaseModel):
    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(cls, error: ErrorInfo | None) -> ErrorView | None:
        return (
            None if error is None else cls(type=error.type, message=error.message, traceback=error.traceback)
        )


class HistoryView(BaseModel):
    at: Timestamp
    kind: str
    name: str
    message_id: str | None = None
    attempt: int | None = None
    detail: Any = None

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistoryView:
        detail: Any = entry.detail
        if entry.detail:
            try:
                detail = orjson.loads(entry.detail)
            except orjson.JSONDecodeError:
                detail = entry.detail
        return cls(
            at=entry.at,
            kind=str(entry.kind),
            name=entry.name,
            message_id=entry.message_id,
            attempt=entry.attempt,
            detail=detail,
        )


class DeadLetterView(BaseModel):
    id: str
    queue: str
    error: ErrorView
    attempts: int
    enqueued_at: Timestamp
    failed_at: Timestamp
    correlation_id: str | None = None
    payload: Any = None
    body: str | None = None
    """The stored body as text, when it is not a conveyor envelope (a foreign or broken message)."""

    @classmethod
    def of(cls, dead: DeadLetter, *, full: bool = True) -> DeadLetterView:
        error = ErrorInfo(dead.error.type, dead.error.message, dead.error.traceback if full else None)
        view = cls(
            id=dead.id,
            queue=dead.queue,
            error=ErrorView(type=error.type, message=error.message, traceback=error.traceback),
            attempts=dead.attempts,
            enqueued_at=dead.enqueued_at,
            failed_at=dead.failed_at,
        )
        if full:
            try:
                envelope = Envelope.decode(dead.body)
            except Exception:
                view.body = dead.body.decode("utf-8", "replace")
            else:
                view.correlation_id = envelope.correlation_id
                view.payload = envelope.payload
        return view


class DeadLetterPage(BaseModel):
    items: list[DeadLetterView]
    next: str | None = None
    """Pass as ``before`` for the next page (None: this was the last)."""


class StepView(BaseModel):
    queue: str
    job_id: str
    state: str
    attempts: int
    enqueued_at: Timestamp | None
    finished_at: Timestamp | None
    last_error: str | None
    duration: float | None = None
    """Seconds from enqueue to its end (None while it runs)."""


class WorkflowView(BaseModel):
    id: str
    state: str
    workflow: str | None
    started_at: Timestamp | None
    updated_at: Timestamp | None
    current: list[str]
    events: list[str]
    compensations: list[str]
    last_error: str | None
    pending_approvals: list[str]
    path: list[str]
    steps: list[StepView] = []
    history: list[HistoryView] = []

    @classmethod
    def of(cls, status: WorkflowStatus, *, full: bool = True) -> WorkflowView:
        steps = [
            StepView(
                queue=s.queue,
                job_id=s.job_id,
                state=s.state,
                attempts=s.attempts,
                enqueued_at=s.enqueued_at,
                finished_at=s.finished_at,
                last_error=s.last_error,
                duration=None
                if s.finished_at is None or s.enqueued_at is None
                else max(0.0, s.finished_at - s.enqueued_at),
            )
            for s in status.steps
        ]
        return cls(
            id=status.id,
            state=status.state,
            workflow=status.workflow,
            started_at=status.started_at,
            updated_at=status.updated_at,
            current=status.current,
            events=status.events,
            compensations=status.compensations,
            last_error=status.last_error,
            pending_approvals=status.pending_approvals,
            path=status.path,
            steps=steps if full else [],
            history=[HistoryView.of(e) for e in status.history] if full else [],
        )


class WorkflowPage(BaseModel):
    items: list[WorkflowView]
    next: str | None = None
    """Pass as ``before`` for the next page (None: nothing older)."""
    scanned: int
    """Instances looked at for this page: with filters, a page may hold fewer than ``limit`` and
    still have a ``next``."""


class HealthView(BaseModel):
    status: Literal["ok", "warn", "fail"]
    problems: list[str]
    queues: dict[str, dict[str, float | int | bool | None]] = {}
    undeclared_queues: list[str] = []
    paused_queues: dict[str, float] = {}
