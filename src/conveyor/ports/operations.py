"""The operations port: what an operator sees and does, on every backend.

Pause and resume a queue, list the leases held now, count what each queue settled per minute, look
a job up and cancel it, keep a registry of the worker processes alive, and find dead letters by
filter. ``conveyor.operations`` builds the operator's API and the CLI on it; the store contract's
``OperationsContract`` holds every backend to it.

Every call here is cheap at scale (a million jobs in a queue, a hundred thousand dead letters): an
index walk or a count off an index, never a sort of a whole table. A page is keyset-paged: the
caller passes the last row it has, not an offset.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from conveyor.ports.core import DeadLetter, ErrorInfo, HistoryEntry

COUNT_BUCKET = 60.0
"""Settlements are counted per queue in buckets of this many seconds (a minute), starting at
multiples of it: ``floor(now / COUNT_BUCKET) * COUNT_BUCKET``."""


class JobState(enum.StrEnum):
    """Where a job is. A backend answers the first four; DONE and CANCELLED come from history."""

    SCHEDULED = "scheduled"
    """Waiting for its time: delayed, or waiting to retry."""
    READY = "ready"
    """Due and not leased (or its lease expired: it is due again)."""
    RUNNING = "running"
    """Leased, the lease live."""
    DEAD = "dead"
    """In the dead letters."""
    DONE = "done"
    """Acknowledged (known from its history, or from its idempotency key within the retention)."""
    CANCELLED = "cancelled"
    """Cancelled before it ran (known from its history)."""


@dataclass(slots=True, frozen=True)
class LeaseInfo:
    """A lease held now (or expired and not yet taken again: ``expires_at < now``)."""

    job_id: str
    queue: str
    attempt: int
    token: int
    worker: str
    """The id of the worker that took the lease (``""`` if it gave none)."""
    leased_at: float
    expires_at: float
    extensions: int
    """How many times the lease was extended (heartbeats, ``ctx.extend_lease``)."""


@dataclass(slots=True, frozen=True)
class JobRecord:
    """A job as its backend holds it: live (scheduled, ready, running) or dead."""

    id: str
    queue: str
    state: JobState
    body: bytes
    attempts: int
    """Leases taken so far (for a dead letter: attempts it took)."""
    enqueued_at: float
    available_at: float | None
    """When it is due (a running job: its lease deadline); None for a dead letter."""
    priority: int = 0
    idempotency_key: str | None = None
    last_error: ErrorInfo | None = None
    """The error of its last failed attempt (a dead letter's: the one that killed it)."""
    lease: LeaseInfo | None = None
    """Its lease, while it is leased."""
    cancel_requested: bool = False
    failed_at: float | None = None
    """When it was dead-lettered."""

    @classmethod
    def from_dead_letter(cls, dead: DeadLetter) -> JobRecord:
        """A dead letter as the job it was: state DEAD, its error as the last one."""
        return cls(
            dead.id,
            dead.queue,
            JobState.DEAD,
            dead.body,
            dead.attempts,
            dead.enqueued_at,
            None,
            last_error=dead.error,
            failed_at=dead.failed_at,
        )


@dataclass(slots=True, frozen=True)
class MinuteCounts:
    """What one queue's settlements came to in one bucket of :data:`COUNT_BUCKET` seconds."""

    queue: str
    minute: float
    """The bucket's start."""
    completed: int
    retried: int
    dead: int


@dataclass(slots=True, frozen=True)
class WorkerInfo:
    """A worker process, as its last heartbeat described it."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: float
    last_seen: float
    settled: int
    """Jobs it settled since it started."""


@dataclass(slots=True, frozen=True)
class DeadLetterFilter:
    """Which dead letters: every field given must match (all None: every dead letter).

    * ``queue``: the queue's name, exactly.
    * ``error_type``: the stored type exactly, or its last dotted part (``PaymentDeclined``
      matches ``shop.errors.PaymentDeclined``).
    * ``since`` / ``until``: ``since <= failed_at < until``.
    * ``text``: a substring of the error's message, case-insensitive (ASCII letters).
    """

    queue: str | None = None
    error_type: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None


@runtime_checkable
class QueueAdmin(Protocol):
    """The operator's calls; every backend implements them (see the module's docstring)."""

    # pause

    async def pause(self, queue: str, now: float) -> bool:
        """Stop leasing ``queue``'s jobs, durably, until :meth:`resume`: a lease already held runs
        on, enqueues are still accepted. True if it was not paused before."""
        ...

    async def resume(self, queue: str) -> bool:
        """Lease ``queue`` again, waking its idle workers. True if it was paused."""
        ...

    async def paused_queues(self) -> dict[str, float]:
        """Every paused queue, with when it was paused."""
        ...

    # leases and counts

    async def leases(self, queue: str | None, limit: int = 100, after: str | None = None) -> list[LeaseInfo]:
        """The jobs leased now (of ``queue``, or of every queue), by job id, those after ``after``."""
        ...

    async def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        """Settlements per queue and bucket, of the buckets starting at or after
        ``floor(since / COUNT_BUCKET) * COUNT_BUCKET``, by queue then bucket; buckets with nothing
        are left out. :meth:`Backend.commit` counts each OK settlement in the bucket of its ``now``:
        ACK as completed, RETRY as retried, DEAD as dead (RELEASE not at all)."""
        ...

    async def prune_counts(self, before: float) -> int:
        """Delete the buckets that start before ``before``. Returns how many rows went."""
        ...

    # jobs

    async def job(self, job_id: str, now: float) -> JobRecord | None:
        """A live job or a dead letter by id (a live job first: a redelivered event may be both)."""
        ...

    async def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        """The id of the job that holds ``key`` in ``queue``, or held it within the retention."""
        ...

    async def job_history(self, job_id: str) -> list[HistoryEntry]:
        """The history entries whose ``message_id`` is ``job_id``, in the order written."""
        ...

    async def cancel_jobs(
        self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry] = ()
    ) -> list[str]:
        """Delete the given jobs that are not leased (scheduled, ready, or with an expired lease
        not taken again), freeing their idempotency keys, and write the ``history`` entries whose
        ``message_id`` is one of them, in the same transaction. Returns the ids cancelled."""
        ...

    async def request_cancel(self, job_id: str) -> bool:
        """Mark a live job's cancellation as requested (its handler sees it through ``ctx``);
        the mark stays until the job is settled for good. False if there is no such live job."""
        ...

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        """Those of ``job_ids`` whose cancellation was requested."""
        ...

    # workers

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Insert or replace ``worker``'s record (its heartbeat)."""
        ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        """The workers seen at or after ``alive_since``, by id; older records are deleted."""
        ...

    # dead letters

    async def find_dead_letters(
        self,
        where: DeadLetterFilter,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[DeadLetter]:
        """Dead letters matching ``where``, newest first (``failed_at``, then id, descending),
        those strictly before the ``(failed_at, id)`` of ``before``."""
        ...

    async def count_dead_letters(self, where: DeadLetterFilter) -> int: ...

    async def dead_letter(self, dead_id: str) -> DeadLetter | None: ...


def matches(where: DeadLetterFilter, dead: DeadLetter) -> bool:
    """Whether ``dead`` matches ``where``: the filter's meaning, for backends that test in Python."""
    error = dead.error
    if where.queue is not None and dead.queue != where.queue:
        return False
    if where.error_type is not None and not (
        error.type == where.error_type or error.type.endswith("." + where.error_type)
    ):
        return False
    if where.since is not None and dead.failed_at < where.since:
        return False
    if where.until is not None and dead.failed_at >= where.until:
        return False
    return where.text is None or ascii_lower(where.text) in ascii_lower(error.message)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """``text`` with ASCII letters lowered, nothing else (what SQL's ``lower`` does on SQLite)."""
    return text.translate(_ASCII_LOWER)


def live_state(leased: bool, available_at: float, now: float) -> JobState:
    """A live job's state from its row: RUNNING while its lease is live, READY when due (a lease
    that expired makes it due again), else SCHEDULED. ``available_at`` is the lease deadline of a
    leased job, as every backend stores it."""
    if leased:
        return JobState.RUNNING if available_at >= now else JobState.READY
    return JobState.READY if available_at <= now else JobState.SCHEDULED


def bucket(now: float) -> float:
    """The start of the count bucket ``now`` falls in."""
    return (now // COUNT_BUCKET) * COUNT_BUCKET


__all__ = [
    "COUNT_BUCKET",
    "DeadLetterFilter",
    "JobRecord",
    "JobState",
    "LeaseInfo",
    "MinuteCounts",
    "QueueAdmin",
    "WorkerInfo",
    "ascii_lower",
    "bucket",
    "live_state",
    "matches",
    "prefix_end",
]


def prefix_end(prefix: str) -> str:
    """The least text above every text that starts with ``prefix`` (code point order, as SQLite
    and a binary collation compare): a range ``[prefix, prefix_end(prefix))`` finds them by index."""
    head = prefix.rstrip("\U0010ffff")
    if not head:
        return "\U0010ffff" * (len(prefix) + 1)
    code = ord(head[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:  # not storable: skip the surrogates
        code = 0xE000
    return head[:-1] + chr(code)
