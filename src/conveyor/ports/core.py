"""The core records and store roles of the backend ports (see :mod:`conveyor.ports`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

PRIORITIES = range(-10, 11)
"""The priorities a job may have. A backend keeps one ordered lane per priority a queue has used
(few, and 0 for nearly every job), so the lease reads each lane's oldest due jobs off an index
rather than sorting a queue's whole backlog by priority."""


@dataclass(slots=True)
class NewJob:
    """A job to store. ``id`` is chosen by the runtime; on an idempotency-key hit the existing id wins."""

    id: str
    queue: str
    body: bytes
    available_at: float
    enqueued_at: float
    idempotency_key: str | None = None
    priority: int = 0
    """Higher first among a queue's due jobs; an int in ``PRIORITIES`` (0 unless asked)."""
    lease_seconds: float | None = None
    """This job's own visibility timeout, in place of its queue's (None: the queue's)."""


@dataclass(slots=True)
class NewEvent:
    """An event to fan out: one job per subscription of ``event``, in the subscription's queue.

    The fanned-out job's id is ``f"{id}:{queue}"`` so a re-delivery of the same event collapses.
    """

    id: str
    event: str
    body: bytes
    emitted_at: float


@dataclass(slots=True)
class LeasedJob:
    id: str
    queue: str
    body: bytes
    attempt: int
    """1-based: this lease's attempt number (leases taken so far, including this one)."""
    token: int
    """Fencing token of this lease; stale once the job is leased again."""
    lease_deadline: float
    enqueued_at: float


class StateOp(enum.Enum):
    SET = "set"
    DELETE = "delete"


@dataclass(slots=True)
class StateWrite:
    """A state write. With ``expected_version`` set, the commit fails with ``CONFLICT`` unless the
    stored version is exactly that (0 means "must not exist")."""

    key: str
    op: StateOp
    value: bytes | None = None
    expected_version: int | None = None


@dataclass(slots=True, frozen=True)
class StateRecord:
    value: bytes
    version: int
    """Starts at 1 and grows by one on every write."""


@dataclass(slots=True)
class HistoryEntry:
    """One transition of a workflow instance, written in the same commit as the step it describes."""

    correlation_id: str
    at: float
    kind: str
    """A :class:`~conveyor.model.history.HistoryKind` value. Text at the port: the runtime passes
    members (a member is a str), backends store and return plain text, readers compare with members."""
    name: str
    """queue or event name, or the state key."""
    message_id: str | None = None
    attempt: int | None = None
    detail: str | None = None
    """JSON text with anything else (error, timings)."""


@dataclass(slots=True, frozen=True)
class InstanceSummary:
    """A workflow instance seen in the history: its first and its latest entry."""

    correlation_id: str
    started_at: float
    updated_at: float


@dataclass(slots=True)
class Effects:
    """Everything a handler asked for, buffered until its job commits."""

    jobs: list[NewJob] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    states: list[StateWrite] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    """(queue, idempotency_key) of pending jobs to delete."""
    history: list[HistoryEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.events or self.states or self.cancels or self.history)


class Outcome(enum.Enum):
    ACK = "ack"
    """Done: delete the job (keep its idempotency key for the retention window)."""
    RETRY = "retry"
    """Failed: lease ends, job available again at ``available_at``; ``error`` is kept as last error."""
    DEAD = "dead"
    """Move to the dead-letter queue with ``error``."""
    RELEASE = "release"
    """Give the job back unrun (graceful shutdown): lease ends, the attempt is not spent."""


@dataclass(slots=True, frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str | None = None


@dataclass(slots=True)
class Settlement:
    job_id: str
    token: int
    outcome: Outcome
    available_at: float | None = None
    error: ErrorInfo | None = None


@dataclass(slots=True)
class Commit:
    settlement: Settlement | None = None
    effects: Effects = field(default_factory=Effects)


class CommitStatus(enum.Enum):
    OK = "ok"
    STALE = "stale"
    """The settlement's token is not the job's current lease, or the lease expired: nothing applied."""
    CONFLICT = "conflict"
    """A state write's ``expected_version`` did not match: nothing applied."""
    REJECTED = "rejected"
    """The backend cannot store what the commit holds (``CommitResult.error`` says why): nothing
    applied. See "A commit the backend cannot store" above."""


@dataclass(slots=True)
class CommitResult:
    status: CommitStatus
    job_ids: tuple[str, ...] = ()
    """Ids of ``effects.jobs`` in order (an idempotency-key hit gives the existing job's id)."""
    deliveries: int = 0
    """How many subscription jobs ``effects.events`` fanned out into."""
    error: str | None = None
    """Why a ``REJECTED`` commit could not be stored."""


@dataclass(slots=True, frozen=True)
class DeadLetter:
    id: str
    queue: str
    body: bytes
    error: ErrorInfo
    attempts: int
    enqueued_at: float
    failed_at: float

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> DeadLetter:
        """From a SQL row: id, queue, body, error type, message, traceback, attempts, enqueued_at,
        failed_at (the column order of both SQL backends' ``dead_letters`` query)."""
        return cls(row[0], row[1], bytes(row[2]), ErrorInfo(row[3], row[4], row[5]), row[6], row[7], row[8])


@dataclass(slots=True, frozen=True)
class QueueStats:
    queue: str
    ready: int
    """available now and not leased"""
    scheduled: int
    """available later (delayed or retrying)"""
    leased: int
    dead: int
    oldest_ready_at: float | None
    paused: bool = False
    """The queue is paused (see :meth:`~conveyor.ports.operations.QueueAdmin.pause`)."""


@runtime_checkable
class QueueStore(Protocol):
    """Durable jobs: enqueue, lease with a fencing token, extend, settle, dead letters."""

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        """Lease up to ``limit`` jobs with ``available_at <= now`` from ``queues`` (name → lease
        seconds), leaving out paused queues: the highest priority first, then the oldest
        ``available_at`` (the same order within a queue and across them). Each gets
        ``attempts + 1``, a new token, and ``available_at = now + lease seconds`` (the job's own
        ``lease_seconds`` when it has one). The lease records ``worker`` (the leasing
        worker's id), ``now`` as its start and no extensions yet, for
        :meth:`~conveyor.ports.operations.QueueAdmin.leases`."""
        ...

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        """Move a live lease's deadline to ``until``, never earlier (an earlier ``until`` keeps the
        deadline and still returns True), and count one extension of the lease. False if the token
        is stale or the lease expired."""
        ...

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when jobs may have arrived in ``queues``, or after ``timeout`` (real) seconds.
        Spurious returns are allowed; a backend without notifications may simply sleep briefly."""
        ...

    async def dead_letters(
        self, queue: str | None, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]: ...

    async def redrive(self, ids: Sequence[str], now: float, available_at: float | None = None) -> int:
        """Move dead letters back to their queues as new attempts (attempts reset), available at
        ``available_at`` (``now`` when None), with priority 0 and their queue's lease. Returns the count.

        A dead letter whose id a live job holds (the same event delivered again) stays where it is:
        replacing that job would break its lease and could run it twice at once."""
        ...

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        """Delete the given dead letters (or all of ``queue``'s when ``ids`` is None)."""
        ...

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]: ...

    async def queue_names(self) -> list[str]:
        """The queues that hold jobs (ready, scheduled or leased) or dead letters, sorted.

        Cheap enough for a health check: an index walk per queue name, never a scan of the jobs.
        It finds jobs in queues no service declares, which nothing would ever run.
        """
        ...


@runtime_checkable
class TopicStore(Protocol):
    """Durable subscriptions: which queues an event fans out into."""

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        """Durably register (event, queue) routes; registering one twice is a no-op."""
        ...

    async def subscriptions(self) -> list[tuple[str, str]]: ...


@runtime_checkable
class StateStore(Protocol):
    """Versioned key/value state. Writes go through :meth:`Backend.commit`."""

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]: ...


@runtime_checkable
class HistoryStore(Protocol):
    """Workflow history, appended through :meth:`Backend.commit`."""

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        """Entries of one workflow instance in the order they were written."""
        ...

    async def prune_history(self, before: float) -> int:
        """Delete entries older than ``before``. Returns how many were deleted."""
        ...

    async def instances(
        self,
        started_after: float | None = None,
        limit: int = 100,
        *,
        before: tuple[float, str] | None = None,
        prefix: str | None = None,
    ) -> list[InstanceSummary]:
        """Instances with history, most recently started (first entry) first, ties by correlation
        id descending, leaving out those that started at or before ``started_after``.

        ``before`` (a start time and a correlation id: the last instance of the page before) keeps
        only those after it in that order; ``prefix`` only correlation ids that start with it. A
        page takes time in proportion to its length, not to the history's (keyset paging).
        """
        ...


@runtime_checkable
class TransactionalOutbox(Protocol):
    """A backend that can write a commit inside the caller's own database transaction, so a row
    the application writes and the job that processes it commit together (or not at all)."""

    async def commit_in(self, connection: Any, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        """Apply ``commits`` on ``connection`` (a driver connection inside an open transaction)."""
        ...


@runtime_checkable
class CommitAndLease(Protocol):
    """A backend that leases in the same round trip as a commit.

    A worker's commit then brings back the jobs that replace the ones it settles, and a job the
    commit itself enqueued for this worker starts without waiting for a wake-up and a lease.
    """

    async def commit_and_lease(
        self,
        commits: Sequence[Commit],
        now: float,
        queues: Mapping[str, float],
        limit: int,
        worker: str = "",
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """:meth:`Backend.commit`, then :meth:`QueueStore.lease` seeing its writes.

        When the call raises, the commits are in doubt as for ``commit``; a job the lease may have
        taken is not lost, it becomes available again when its lease expires.
        """
        ...
