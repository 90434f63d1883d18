"""The whole backend: every store role, the operations port, and the atomic commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from conveyor.ports.core import Commit, CommitResult, HistoryStore, QueueStore, StateStore, TopicStore
from conveyor.ports.operations import QueueAdmin


@runtime_checkable
class Backend(QueueStore, TopicStore, StateStore, HistoryStore, QueueAdmin, Protocol):
    """A backend serving every role, committing settlements and effects atomically."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        """Apply each commit atomically and independently; results in the same order.

        A commit whose content this backend cannot store is answered ``REJECTED``, or the call
        raises :class:`~conveyor.model.errors.CommitRejectedError` having applied nothing (see
        the module's docstring); an unreachable backend raises
        :class:`~conveyor.model.errors.BackendUnavailableError`, and the commits are in doubt.

        For a settlement: check the token (and that ``available_at >= now``, the lease is live),
        then ACK deletes the job, RETRY/RELEASE end the lease (RELEASE also gives the attempt back),
        DEAD moves the job to the dead-letter queue. Then the effects: state writes (checked against
        ``expected_version`` before anything is applied), cancels, new jobs (idempotency keys are
        unique per queue while the job exists and for ``idempotency_retention`` after its ack),
        events fanned out into every subscribed queue, history entries. Each OK settlement but
        RELEASE is counted for :meth:`~conveyor.ports.operations.QueueAdmin.queue_counts`.
        """
        ...
