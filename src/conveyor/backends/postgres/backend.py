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

import orjson

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, url_options
from conveyor.backends.postgres import schema as pg_schema
from conveyor.backends.postgres.connections import Connection, check_conninfo, libpq_url, shown
from conveyor.backends.postgres.listener import Listener, notification
from conveyor.backends.postgres.worker_path import DEFAULT_VACUUM_INTERVAL, PURGE_BATCH, WorkerPath
from conveyor.model.errors import ConfigurationError
from conveyor.ports import (
    DeadLetter,
    DeadLetterFilter,
    ErrorInfo,
    HistoryEntry,
    InstanceSummary,
    JobRecord,
    LeaseInfo,
    MinuteCounts,
    QueueStats,
    StateRecord,
    WorkerInfo,
)
from conveyor.ports.operations import bucket, live_state, prefix_end

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
        self._text_by_byte: bool | None = None
        """Whether the database sorts text by byte (asked at the first prefix listing)."""
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

    async def redrive(self, ids: Sequence[str], now: float, available_at: float | None = None) -> int:
        if not ids:
            return 0
        at = now if available_at is None else available_at
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._queries["redrive"], {"ids": list(ids), "at": at})
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
                paused=rows[queue][6],
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

    async def instances(
        self,
        started_after: float | None = None,
        limit: int = 100,
        *,
        before: tuple[float, str] | None = None,
        prefix: str | None = None,
    ) -> list[InstanceSummary]:
        after = -math.inf if started_after is None else started_after
        at, below = before if before is not None else (math.inf, "")
        params = {
            "started_after": after,
            "before_at": at,
            "before_id": below,
            "prefix": prefix or None,
            "limit": limit,
        }
        if prefix and await self._byte_ordered():
            params |= {"low": prefix, "high": prefix_end(prefix)}
            rows = await self._fetch("instances_by_prefix", params)
        else:  # the newest-first walk, each id checked with starts_with
            rows = await self._fetch("instances", params)
        return [InstanceSummary(*row) for row in rows]

    async def _byte_ordered(self) -> bool:
        if self._text_by_byte is None:
            rows = await self._fetch("byte_ordered", {})
            self._text_by_byte = bool(rows and rows[0][0])
        return self._text_by_byte

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

    # operations

    async def pause(self, queue: str, now: float) -> bool:
        return await self._rowcount("pause", {"queue": queue, "now": now}) == 1

    async def resume(self, queue: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._queries["resume"], {"queue": queue})
            resumed = cursor.rowcount == 1
            if resumed:
                await self._notify(conn, [queue])
        if resumed:
            self._listener.wake([queue])
        return resumed

    async def paused_queues(self) -> dict[str, float]:
        return {row[0]: row[1] for row in await self._fetch("paused_queues", {})}

    async def leases(self, queue: str | None, limit: int = 100, after: str | None = None) -> list[LeaseInfo]:
        rows = await self._fetch("leases", {"queue": queue, "after": after, "limit": limit})
        return [LeaseInfo(*row) for row in rows]

    async def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        if not queues:
            return []
        rows = await self._fetch("queue_counts", {"queues": list(queues), "start": bucket(since)})
        return [MinuteCounts(row[0], row[1], int(row[2]), int(row[3]), int(row[4])) for row in rows]

    async def prune_counts(self, before: float) -> int:
        return await self._rowcount("prune_counts", {"before": before})

    async def job(self, job_id: str, now: float) -> JobRecord | None:
        rows = await self._fetch("job", {"id": job_id}, binary=True)
        if rows:
            (ident, queue, body, attempts, enqueued_at, available_at, priority, key, last_error, token,
             worker, leased_at, extensions, cancel_requested) = rows[0]  # fmt: skip
            lease = None
            if token is not None:
                lease = LeaseInfo(ident, queue, attempts, token, worker, leased_at, available_at, extensions)
            return JobRecord(
                ident,
                queue,
                live_state(lease is not None, available_at, now),
                bytes(body),
                attempts,
                enqueued_at,
                available_at,
                priority,
                key,
                _error(last_error),
                lease,
                cancel_requested,
            )
        dead = await self.dead_letter(job_id)
        if dead is None:
            return None
        return JobRecord.from_dead_letter(dead)

    async def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        rows = await self._fetch("job_for_key", {"queue": queue, "key": key, "now": now})
        return rows[0][0] if rows else None

    async def job_history(self, job_id: str) -> list[HistoryEntry]:
        return [HistoryEntry(*row) for row in await self._fetch("job_history", {"id": job_id})]

    async def cancel_jobs(
        self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry] = ()
    ) -> list[str]:
        if not ids:
            return []
        params: dict[str, Any] = {"ids": list(ids), "now": now}
        for name in ("correlation_id", "at", "kind", "name", "message_id", "attempt", "detail"):
            params[f"h_{name}"] = [getattr(entry, name) for entry in history]
        gone = {row[0] for row in await self._fetch("cancel_jobs", params)}
        return [job_id for job_id in dict.fromkeys(ids) if job_id in gone]

    async def request_cancel(self, job_id: str) -> bool:
        return await self._rowcount("request_cancel", {"id": job_id}) == 1

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        flagged = {row[0] for row in await self._fetch("cancel_requests", {"ids": list(job_ids)})}
        return [job_id for job_id in job_ids if job_id in flagged]

    async def register_worker(self, worker: WorkerInfo) -> None:
        params = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "queues": list(worker.queues),
            "concurrency": worker.concurrency,
            "started_at": worker.started_at,
            "last_seen": worker.last_seen,
            "settled": worker.settled,
        }
        await self._rowcount("register_worker", params)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._rowcount("unregister_worker", {"id": worker_id})

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        rows = await self._fetch("workers", {"alive_since": alive_since})
        return [
            WorkerInfo(row[0], row[1], row[2], tuple(row[3]), row[4], row[5], row[6], int(row[7]))
            for row in rows
        ]

    async def find_dead_letters(
        self, where: DeadLetterFilter, limit: int = 100, before: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        params = _filter_params(where)
        order = ""
        if before is not None:
            params["before_at"], params["before_id"] = before
            order = "before"
        name = self._dead_letter_query("find", where, order)
        rows = await self._fetch(name, {**params, "limit": limit}, binary=True)
        return [DeadLetter.from_row(row) for row in rows]

    async def count_dead_letters(self, where: DeadLetterFilter) -> int:
        rows = await self._fetch(self._dead_letter_query("count", where, ""), _filter_params(where))
        return int(rows[0][0])

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        rows = await self._fetch("dead_letter", {"id": dead_id}, binary=True)
        return DeadLetter.from_row(rows[0]) if rows else None

    def _dead_letter_query(self, kind: str, where: DeadLetterFilter, before: str) -> str:
        """The name of the query for ``where``'s fields that are set (composed once per shape):
        only the conditions given, so the planner sees each filter's own plan (the per-queue
        index with a queue, the (failed_at, id) index without, both read newest first)."""
        fields = [f for f in _FILTER_CONDITIONS if getattr(where, f) is not None]
        name = f"dead_letters:{kind}:{','.join(fields)}:{before}"
        if name not in self._queries:
            conditions = [_FILTER_CONDITIONS[f] for f in fields]
            if before:
                conditions.append("(failed_at, id) < (%(before_at)s::double precision, %(before_id)s::text)")
            clause = " AND ".join(conditions) or "true"
            if kind == "count":
                text = f"SELECT count(*) FROM {{schema}}.dead_letters WHERE {clause}"
            else:
                text = (
                    "SELECT id, queue, body, error_type, error_message, error_traceback, attempts,"
                    f" enqueued_at, failed_at FROM {{schema}}.dead_letters WHERE {clause}"
                    " ORDER BY failed_at DESC, id DESC LIMIT %(limit)s"
                )
            self._queries[name] = pg_schema.render(text, self.schema)
        return name


_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
_FILTER_CONDITIONS = {
    "queue": "queue = %(queue)s::text",
    "error_type": (
        "(error_type = %(error_type)s::text"
        " OR right(error_type, length(%(error_type)s::text) + 1) = '.' || %(error_type)s::text)"
    ),
    "since": "failed_at >= %(since)s::double precision",
    "until": "failed_at < %(until)s::double precision",
    # ASCII letters only are folded (as the other backends do), whatever the database's collation
    "text": (
        f"strpos(translate(error_message, '{_UPPER}', '{_LOWER}'),"
        f" translate(%(text)s::text, '{_UPPER}', '{_LOWER}')) > 0"
    ),
}
"""Each :class:`DeadLetterFilter` field's SQL condition (fixed text: values are bound)."""


def _filter_params(where: DeadLetterFilter) -> dict[str, Any]:
    return {f: getattr(where, f) for f in _FILTER_CONDITIONS if getattr(where, f) is not None}


def _error(last_error: str | None) -> ErrorInfo | None:
    """A job's ``last_error`` column (JSON written by commit_batch) as an :class:`ErrorInfo`."""
    if last_error is None:
        return None
    try:
        data = orjson.loads(last_error)
        return ErrorInfo(data["type"], data["message"], data.get("traceback"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ErrorInfo("unknown", last_error)
