"""One job as an operator sees it: where it is and why, and cancelling it.

``app.jobs`` is a :class:`Jobs`. A live job or a dead letter is read from the backend; a job that
finished is known from its workflow history (its ``succeeded`` or ``cancelled`` entry), so with
``App(history=False)``, or once its history is pruned, a finished job is not found.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor.model.envelope import Envelope
from conveyor.model.history import HistoryKind
from conveyor.ports import Backend, ErrorInfo, HistoryEntry, JobState, LeaseInfo
from conveyor.runtime.clock import Clock

_FINAL: dict[str, JobState] = {
    HistoryKind.SUCCEEDED: JobState.DONE,
    HistoryKind.CANCELLED: JobState.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class JobView:
    """A job: its state, its attempts and last error, its payload and its history."""

    id: str
    queue: str
    state: JobState
    attempts: int
    correlation_id: str | None
    """Its workflow instance (None when its body is not a conveyor envelope)."""
    payload: Any = None
    enqueued_at: float | None = None
    available_at: float | None = None
    """When it is due (running: its lease deadline)."""
    priority: int = 0
    idempotency_key: str | None = None
    last_error: ErrorInfo | None = None
    lease: LeaseInfo | None = None
    cancel_requested: bool = False
    failed_at: float | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    """Its own entries (enqueued, retried, succeeded, ...), oldest first."""


class CancelOutcome(enum.StrEnum):
    """What :meth:`Jobs.cancel` did."""

    CANCELLED = "cancelled"
    """It was waiting (scheduled or ready): deleted, its idempotency key freed."""
    REQUESTED = "requested"
    """It is running: its handler is asked to stop (``ctx.cancel_requested``)."""
    NOT_FOUND = "not_found"
    """No live job has this id."""
    FINISHED = "finished"
    """It is done, cancelled already, or dead-lettered (purge a dead letter instead)."""


class Jobs:
    """``app.jobs``: look a job up by id or idempotency key, cancel it."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self._backend = backend
        self._clock = clock

    async def get(self, job_id: str) -> JobView | None:
        """The job ``job_id``, live, dead or finished; None if nothing knows of it."""
        backend = self._backend
        record = await backend.job(job_id, self._clock.now())
        history = await backend.job_history(job_id)
        if record is None:
            final = next((_FINAL[e.kind] for e in reversed(history) if e.kind in _FINAL), None)
            if final is None:
                return None
            first = history[0]
            queue = next((e.name for e in history if e.message_id == job_id), first.name)
            attempts = max((e.attempt or 0 for e in history), default=0)
            return JobView(job_id, queue, final, attempts, first.correlation_id, history=history)
        envelope = _envelope(record.body)
        return JobView(
            record.id,
            record.queue,
            record.state,
            record.attempts,
            envelope.correlation_id if envelope is not None else None,
            envelope.payload if envelope is not None else None,
            record.enqueued_at,
            record.available_at,
            record.priority,
            record.idempotency_key,
            record.last_error,
            record.lease,
            record.cancel_requested,
            record.failed_at,
            history,
        )

    async def by_key(self, queue: str, idempotency_key: str) -> JobView | None:
        """The job of ``queue`` that holds ``idempotency_key`` (or held it, within the retention)."""
        job_id = await self._backend.job_for_key(queue, idempotency_key, self._clock.now())
        return None if job_id is None else await self.get(job_id)

    async def cancel(self, job_id: str, *, by: str | None = None) -> CancelOutcome:
        """Cancel a waiting job now, or ask a running one to stop (see :class:`CancelOutcome`).

        A cancelled job gets a ``cancelled`` history entry (``by`` in its detail, when given).
        """
        backend, now = self._backend, self._clock.now()
        record = await backend.job(job_id, now)
        if record is None:
            return CancelOutcome.FINISHED if await backend.job_history(job_id) else CancelOutcome.NOT_FOUND
        if record.state is JobState.DEAD:
            return CancelOutcome.FINISHED
        if record.state is not JobState.RUNNING:
            envelope = _envelope(record.body)
            detail = orjson.dumps({"by": by} if by else {"by": "operator"}).decode()
            entry = HistoryEntry(
                envelope.correlation_id if envelope is not None else job_id,
                now,
                HistoryKind.CANCELLED,
                record.queue,
                job_id,
                None,
                detail,
            )
            if await backend.cancel_jobs([job_id], now, [entry]):
                return CancelOutcome.CANCELLED
        # running (or leased since it was read): its handler is asked to stop
        return CancelOutcome.REQUESTED if await backend.request_cancel(job_id) else CancelOutcome.FINISHED


def _envelope(body: bytes) -> Envelope | None:
    try:
        return Envelope.decode(body)
    except Exception:  # a foreign or broken body: shown without its payload
        return None
