"""``postgresql://user@host:port/db?schema=conveyor``: jobs, events and state in PostgreSQL.

One lease batch is one statement (``UPDATE ... FOR UPDATE SKIP LOCKED``); one commit batch is one
call of the ``commit_batch`` function, so one round trip and one transaction whatever its size.
Idle workers are woken by LISTEN/NOTIFY. Finished jobs are deleted, keeping the jobs table small.

:class:`PostgresBackend` is assembled from its concerns: :mod:`.connections` (URL, pool,
migration), :mod:`.worker_path` (lease and commit, the hot path), and here the rest of the ports
(dead letters, stats, topics, states, history) and the options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, url_options
from conveyor.backends.postgres import schema as pg_schema
from conveyor.backends.postgres.connections import Connection, check_conninfo, libpq_url, shown
from conveyor.backends.postgres.listener import Listener, notification
from conveyor.backends.postgres.worker_path import DEFAULT_VACUUM_INTERVAL, PURGE_BATCH, WorkerPath
from conveyor.model.errors import ConfigurationError
from conveyor.ports import (
    DeadLetter,
    HistoryEntry,
    InstanceSummary,
    QueueStats,
    StateRecord,
)

DEFAULT_SCHEMA = "conveyor"
DEFAULT_POOL_MIN_SIZE = 2
DEFAULT_POOL_MAX_SIZE = 10
DEFAULT_POOL_TIMEOUT = 10.0
PRUNE_BATCH = 5000


class PostgresBackend(WorkerPath):
    """Every role on PostgreSQL, with settlements and effects committed atomically.

    URL query options (keywords override them): ``schema`` (default ``conveyor``),
    ``idempotency_retention`` (seconds, default 24h), ``pool_min_size``, ``pool_max_size``,
    ``pool_timeout`` (seconds to wait for a connection), ``vacuum_interval`` (seconds between the
    backend's own vacuums of its hot tables, default 10, 0 = leave it to autovacuum). Anything else
    goes to libpq (``sslmode``, ``application_name``, ...).

    Besides the ports it offers :meth:`commit_in` (the transactional outbox: commit jobs and events
    inside the caller's own transaction), :meth:`migrate` and :meth:`maintenance`.
    """

    def __init__(
        self,
        url: str = "postgresql://localhost/postgres",
        *,
        schema: str | None = None,
        idempotency_retention: float | None = None,
        pool_min_size: int | None = None,
        pool_max_size: int | None = None,
        pool_timeout: float | None = None,
        vacuum_interval: float | None = None,
    ) -> None:
        options = url_options(url)

        def option(given: float | None, key: str, default: float) -> float:
            return float(given if given is not None else options.get(key, default))

        try:
            self.schema = pg_schema.validate_schema(schema or options.get("schema", DEFAULT_SCHEMA))
            self.idempotency_retention = option(
                idempotency_retention, "idempotency_retention", DEFAULT_IDEMPOTENCY_RETENTION
            )
            self._pool_min_size = int(option(pool_min_size, "pool_min_size", DEFAULT_POOL_MIN_SIZE))
            self._pool_max_size = max(
                self._pool_min_size,
                int(option(pool_max_size, "pool_max_size", DEFAULT_POOL_MAX_SIZE)),
            )
            self._pool_timeout = option(pool_timeout, "pool_timeout", DEFAULT_POOL_TIMEOUT)
            self.vacuum_interval = option(vacuum_interval, "vacuum_interval", DEFAULT_VACUUM_INTERVAL)
        except ValueError as exc:
            raise ConfigurationError(f"invalid option in PostgreSQL URL {shown(url)!r}: {exc}") from exc
        self.url = url
        self.channel = f"conveyor:{self.schema}"
        """This schema's NOTIFY channel; a payload is newline-separated queue names or ``*``."""
        self._conninfo = libpq_url(url)
        check_conninfo(self._conninfo, url)
        self._connect_options = {} if "application_name" in options else {"application_name": "conveyor"}
        self._queries = pg_schema.load_queries(self.schema)
        self._queries["commit_and_lease"] = self._queries["commit_and_lease"].replace(
            "{commit}", self._queries["commit"]
        )
        self._pool = None
        self._listener = Listener(self._conninfo, self.channel, self._connect_options)
        self._next_purge = None
        self._next_vacuum = 0.0
        self._dirty = False
        self._vacuuming = None
        self._serving = None
        """Set by the first lease: from then on pooled connections are warmed up."""
        self._warmed = set()
        """Server pids of the connections warmed up."""
        self.vacuums = 0
        """vacuums this backend ran (tests and benchmarks read it)"""

    # queue store

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        params = {"id": job_id, "token": token, "until": until, "now": now}
        return await self._rowcount("extend", params) == 1

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        await self._listener.wait(queues, timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        params = {"queue": queue, "limit": limit, "offset": offset}
        rows = await self._fetch("dead_letters", params, binary=True)
        return [DeadLetter.from_row(row) for row in rows]

    async def redrive(self, ids: Sequence[str], now: float) -> int:
        if not ids:
            return 0
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._queries["redrive"], {"ids": list(ids), "now": now})
            row = await cursor.fetchone()
            assert row is not None
            count, queues = row
            if queues:
                await self._notify(conn, queues)
        if queues:
            self._listener.wake(queues)  # this process's waiters do not hear their own notifications
        return int(count)

    async def _notify(self, conn: Connection, queues: Sequence[str]) -> None:
        await conn.execute(
            self._queries["notify"], {"channel": self.channel, "payload": notification(queues)}
        )

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        if ids is None:
            return await self._rowcount("purge_queue", {"queue": queue})
        return await self._rowcount("purge_ids", {"ids": list(ids)})

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        if not queues:
            return []
        rows = {row[0]: row for row in await self._fetch("stats", {"queues": list(queues), "now": now})}
        return [
            QueueStats(
                queue=queue,
                ready=rows[queue][1],
                scheduled=rows[queue][2],
                leased=rows[queue][3],
                dead=rows[queue][4],
                oldest_ready_at=rows[queue][5],
            )
            for queue in queues
        ]

    async def queue_names(self) -> list[str]:
        return [row[0] for row in await self._fetch("queue_names", {})]

    # topic store

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        if not routes:
            return
        params = {
            "events": [event for event, _ in routes],
            "queues": [queue for _, queue in routes],
        }
        await self._rowcount("register_subscriptions", params)

    async def subscriptions(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in await self._fetch("subscriptions", {})]

    # state store

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        if not keys:
            return {}
        rows = await self._fetch("get_states", {"keys": list(keys)}, binary=True)
        found = {row[0]: StateRecord(row[1], row[2]) for row in rows}
        return {key: found[key] for key in keys if key in found}

    # history store

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        rows = await self._fetch("history", {"correlation_id": correlation_id})
        return [HistoryEntry(*row) for row in rows]

    async def instances(self, started_after: float | None = None, limit: int = 100) -> list[InstanceSummary]:
        after = -math.inf if started_after is None else started_after
        rows = await self._fetch("instances", {"started_after": after, "limit": limit})
        return [InstanceSummary(*row) for row in rows]

    async def prune_history(self, before: float) -> int:
        """Delete entries older than ``before``, a batch per transaction so no lock is held long."""
        return await self._delete_in_batches("prune_history", {"before": before}, PRUNE_BATCH)

    async def maintenance(self, now: float) -> int:
        """Delete every idempotency key whose retention ended by ``now``; returns how many.

        Commits already purge a few now and then; call this from a periodic job to catch up.
        """
        return await self._delete_in_batches("purge_idempotency", {"now": now}, PURGE_BATCH)

    async def _delete_in_batches(self, query: str, params: dict[str, Any], batch: int) -> int:
        deleted = 0
        while True:
            count = await self._rowcount(query, {**params, "batch": batch})
            deleted += count
            if count < batch:
                return deleted
