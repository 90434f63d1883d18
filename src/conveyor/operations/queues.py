"""Queues as an operator sees them: pause and resume, metrics, the leases held now.

``app.queues`` is a :class:`Queues`. Pausing is durable (it is kept by the backend) and every
worker honours it at its next lease call, which a worker makes whenever a slot frees or its idle
wait ends (``WorkerConfig.poll_interval``, 0.5 s by default): well within a second. A paused queue
still accepts jobs; the jobs already leased run to their end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.definitions.registry import Registry
from conveyor.model.errors import UnknownQueueError
from conveyor.ports import COUNT_BUCKET, Backend, LeaseInfo, MinuteCounts
from conveyor.runtime.clock import Clock

METRICS_WINDOW = 300.0
"""Over how many seconds :meth:`Queues.metrics` averages the per-minute rates (five minutes)."""


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """One queue now, and what it settled per minute over the last ``window`` seconds."""

    queue: str
    ready: int
    scheduled: int
    """Delayed, or waiting to retry."""
    in_flight: int
    """Leased now."""
    dead: int
    paused: bool
    paused_at: float | None
    oldest_ready_age: float | None
    """Seconds the oldest ready job has waited (None: nothing ready)."""
    completed_per_minute: float
    retried_per_minute: float
    dead_per_minute: float
    declared: bool
    """Whether a service of this app declares the queue (or names it external)."""


class Queues:
    """``app.queues``: pause, resume, metrics and leases of the app's queues."""

    def __init__(self, backend: Backend, clock: Clock, registry: Registry) -> None:
        self._backend = backend
        self._clock = clock
        self._registry = registry

    async def names(self) -> list[str]:
        """Every queue the app declares or names external, and every other queue holding jobs."""
        return sorted(self._registry.known_queues | set(await self._backend.queue_names()))

    async def _known(self, queue: str) -> str:
        if queue in self._registry.known_queues or queue in await self._backend.queue_names():
            return queue
        raise UnknownQueueError.among(
            "queue", queue, self._registry.known_queues, " (nor does any job or dead letter name it)"
        )

    async def pause(self, queue: str) -> bool:
        """Stop leasing ``queue``'s jobs (durably, for every worker) until :meth:`resume`.
        False if it was paused already. An unknown queue raises :class:`UnknownQueueError`."""
        return await self._backend.pause(await self._known(queue), self._clock.now())

    async def resume(self, queue: str) -> bool:
        """Lease ``queue``'s jobs again. False if it was not paused."""
        return await self._backend.resume(queue)

    async def paused(self) -> dict[str, float]:
        """The paused queues, with when each was paused."""
        return await self._backend.paused_queues()

    async def metrics(
        self, queues: Sequence[str] | None = None, *, window: float = METRICS_WINDOW
    ) -> list[QueueMetrics]:
        """:class:`QueueMetrics` of ``queues`` (default: :meth:`names`), the rates averaged over
        the whole minutes of the last ``window`` seconds."""
        backend, now = self._backend, self._clock.now()
        names = list(queues) if queues is not None else await self.names()
        stats = await backend.stats(names, now)
        paused = await backend.paused_queues()
        minutes = max(1.0, window / COUNT_BUCKET)
        since = now - minutes * COUNT_BUCKET
        totals: dict[str, list[int]] = {}
        for counts in await backend.queue_counts(names, since):
            if counts.minute + COUNT_BUCKET <= now:  # whole minutes only: the current one is partial
                total = totals.setdefault(counts.queue, [0, 0, 0])
                total[0] += counts.completed
                total[1] += counts.retried
                total[2] += counts.dead
        known = self._registry.known_queues
        result = []
        for s in stats:
            completed, retried, dead = totals.get(s.queue, (0, 0, 0))
            result.append(
                QueueMetrics(
                    queue=s.queue,
                    ready=s.ready,
                    scheduled=s.scheduled,
                    in_flight=s.leased,
                    dead=s.dead,
                    paused=s.paused,
                    paused_at=paused.get(s.queue),
                    oldest_ready_age=None if s.oldest_ready_at is None else max(0.0, now - s.oldest_ready_at),
                    completed_per_minute=completed / minutes,
                    retried_per_minute=retried / minutes,
                    dead_per_minute=dead / minutes,
                    declared=s.queue in known,
                )
            )
        return result

    async def throughput(self, queues: Sequence[str] | None = None, *, since: float) -> list[MinuteCounts]:
        """Settlements per queue and minute since ``since`` (a time on the app's clock)."""
        names = list(queues) if queues is not None else await self.names()
        return await self._backend.queue_counts(names, since)

    async def leases(
        self, queue: str | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[LeaseInfo]:
        """The jobs leased now (of ``queue``, or every queue), by job id; page on with ``after``
        set to the last job id of the page before."""
        return await self._backend.leases(queue, limit, after)
