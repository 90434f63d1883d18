"""The backend ports: what a backend must do, split by role.

Backends store and move data; policy (retry delays, dead-letter decisions, schedule ticks) lives in
the runtime. Every time a backend compares against "now" it is given ``now`` by the caller, so one
injectable clock drives leases, delays and schedules on every backend.

A job row, whatever the storage, holds: ``id``, ``queue``, ``body`` (the encoded envelope),
``available_at``, ``attempts`` (leases taken so far), ``token`` (fencing token of the current lease,
an integer that only grows), ``enqueued_at``, ``idempotency_key``. A lease moves ``available_at`` to the
lease deadline, so a job whose worker died becomes available again by the same rule as a delayed one.

The unit of writing is a :class:`Commit`: an optional :class:`Settlement` of a leased job (ack,
retry, dead-letter, release) plus the :class:`Effects` its handler buffered. A backend applies each
commit atomically: all of it or none of it. A batch of commits may share one round trip or one
transaction, but the commits stay independent: one stale commit does not sink the others.

A commit the backend cannot store must not sink the others either. The runtime refuses, at the
call that produced it, every key, name and id with a NUL or a lone surrogate and every payload or
state value JSON cannot carry (see :mod:`conveyor.model.text`), and checks each worker commit's text
again before it joins a batch; what is left is what only one backend refuses (a key longer than its
index takes, a corrupt record in the way). For such a commit a backend does one of two things:

1. (best: one round trip) check every commit of the call before applying any of it, answer
   :attr:`CommitStatus.REJECTED` with :attr:`CommitResult.error` saying why for each one it cannot
   store, apply nothing of those and the others as usual;
2. raise :class:`~conveyor.model.errors.CommitRejectedError` (the driver's error chained) having
   applied nothing of the call: its transaction rolled back, or nothing sent.

Either way never part of a call and then an exception, nor part of one commit. The worker's
committer (``conveyor.runtime.committer``) splits a call that raised anything but
:class:`~conveyor.model.errors.BackendUnavailableError` into halves and commits them again, down to
single commits, so the others of the batch commit in the same pass and the culprit's job is
dead-lettered with the reason on that attempt. A commit that fails alone with another error than
``CommitRejectedError`` counts as rejected only if some other commit of its batch went through;
otherwise the failure is taken for the backend's (every commit failed) and its jobs are leased
again when their leases expire, as after any failed commit.

The records built once or more per job (:class:`NewJob`, :class:`NewEvent`, :class:`LeasedJob`,
:class:`StateWrite`, :class:`HistoryEntry`, :class:`Settlement`, :class:`CommitResult`) are plain
slotted dataclasses, not frozen ones: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__`` and costs about four times as much, which a 1,000-job enqueue pays 2,000 times
(1.8 µs against 0.4 µs: docs/BENCHMARKS.md "What changed since the first measurements", item 1;
the command was not recorded, not re-measured).
Nothing mutates them after construction; treat them as values.
"""

from __future__ import annotations

from conveyor.ports.backend import Backend
from conveyor.ports.core import (
    PRIORITIES,
    Commit,
    CommitAndLease,
    CommitResult,
    CommitStatus,
    DeadLetter,
    Effects,
    ErrorInfo,
    HistoryEntry,
    HistoryStore,
    InstanceSummary,
    LeasedJob,
    NewEvent,
    NewJob,
    Outcome,
    QueueStats,
    QueueStore,
    Settlement,
    StateOp,
    StateRecord,
    StateStore,
    StateWrite,
    TopicStore,
    TransactionalOutbox,
)
from conveyor.ports.operations import (
    COUNT_BUCKET,
    DeadLetterFilter,
    JobRecord,
    JobState,
    LeaseInfo,
    MinuteCounts,
    QueueAdmin,
    WorkerInfo,
)

__all__ = [
    "COUNT_BUCKET",
    "PRIORITIES",
    "Backend",
    "Commit",
    "CommitAndLease",
    "CommitResult",
    "CommitStatus",
    "DeadLetter",
    "DeadLetterFilter",
    "Effects",
    "ErrorInfo",
    "HistoryEntry",
    "HistoryStore",
    "InstanceSummary",
    "JobRecord",
    "JobState",
    "LeaseInfo",
    "LeasedJob",
    "MinuteCounts",
    "NewEvent",
    "NewJob",
    "Outcome",
    "QueueAdmin",
    "QueueStats",
    "QueueStore",
    "Settlement",
    "StateOp",
    "StateRecord",
    "StateStore",
    "StateWrite",
    "TopicStore",
    "TransactionalOutbox",
    "WorkerInfo",
]
