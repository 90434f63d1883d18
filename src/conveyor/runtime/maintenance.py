"""What a serving process does beside working jobs: pruning old history, feeding the queue gauges."""

from __future__ import annotations

import logging

from conveyor.model.errors import ConveyorError
from conveyor.runtime.runtime import Runtime

logger = logging.getLogger("conveyor")

MAINTENANCE_INTERVAL = 3600.0
"""How often old workflow history is pruned (seconds)."""
QUEUE_METRICS_INTERVAL = 15.0
"""How often the queue gauges are fed from a stats query (seconds)."""
COUNTS_RETENTION = 7 * 86400.0
"""How long the per-minute settlement counts (queue metrics' rates, dashboards' charts) are kept."""
UNDECLARED_QUEUES_INTERVAL = 300.0
"""How often a worker's metrics look for jobs in queues no service declares (seconds)."""


async def undeclared_queues(runtime: Runtime) -> list[str]:
    """Queues holding jobs or dead letters that no service declares and that are not external."""
    known = runtime.registry.known_queues
    return [name for name in await runtime.backend.queue_names() if name not in known]


async def prune_history(runtime: Runtime, retention: float | None) -> None:
    """Hourly: delete workflow history older than ``retention`` seconds (None: keep it all), and
    the per-minute settlement counts older than :data:`COUNTS_RETENTION`."""
    while True:
        now = runtime.clock.now()
        try:
            if retention is not None:
                removed = await runtime.backend.prune_history(now - retention)
                if removed:
                    logger.info("pruned %d history entries older than %.0fs", removed, retention)
            await runtime.backend.prune_counts(now - COUNTS_RETENTION)
        except ConveyorError as exc:
            logger.warning("history pruning failed: %s", exc)
        await runtime.clock.sleep(MAINTENANCE_INTERVAL)


async def refresh_queue_metrics(
    runtime: Runtime, names: list[str], every: float = QUEUE_METRICS_INTERVAL
) -> None:
    """Feed the queue gauges (depth, oldest age, dead letters) from a periodic stats query.

    The served queues, and the undeclared ones holding jobs, looked for every
    :data:`UNDECLARED_QUEUES_INTERVAL` (on Redis that look is a SCAN of the keyspace).
    """
    undeclared: list[str] = []
    looked_at: float | None = None
    clock = runtime.clock
    while True:
        try:
            now = clock.now()
            if looked_at is None or now - looked_at >= UNDECLARED_QUEUES_INTERVAL:
                undeclared, looked_at = await undeclared_queues(runtime), now
            runtime.metrics.record_stats(await runtime.backend.stats(names + undeclared, now), clock.now())
        except ConveyorError as exc:
            logger.warning("queue metrics not refreshed: %s", exc)
        await clock.sleep(every)
