"""``RedisBackend``: every port on one Redis, one Lua script per lease batch and per commit batch.

The key layout, the Cluster caveat and the durability notes are in the package docstring.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import ResponseError

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, url_options
from conveyor.backends.redis import codec
from conveyor.backends.redis.errors import translated
from conveyor.backends.redis.operations import Operations
from conveyor.backends.redis.scripts import Scripts, command
from conveyor.backends.redis.worker_path import WorkerPath
from conveyor.model.errors import BackendError, ConfigurationError
from conveyor.ports import DeadLetter, HistoryEntry, InstanceSummary, QueueStats, StateRecord

DEFAULT_PREFIX = "conveyor"
_OWN_OPTIONS = ("prefix", "idempotency_retention")
_PURGE_BATCH = 1000
_PRUNE_BATCH = 100
_SCAN_COUNT = 1000


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a SCAN ``MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


_INSTANCES_BUDGET = 5000
"""Instances one call of instances.lua looks at, at most (a prefix filter may pass many)."""


class RedisBackend(WorkerPath, Operations):
    """``redis://host:port/db?prefix=conveyor``: every role on one Redis (``rediss://`` for TLS).

    Options come from the URL query or keywords (keywords win): ``prefix`` names the app's keys,
    ``idempotency_retention`` (seconds) how long an idempotency key outlives its job. Any other
    query option goes to redis-py (``socket_timeout``, default 30 s; ``socket_connect_timeout``,
    default 5 s; ``max_connections``...).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        idempotency_retention: float | None = None,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        # the URL as error messages show it: without its password
        self._shown_url = (
            urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
            if parts.password
            else url
        )
        options = url_options(url)
        self.prefix = prefix if prefix is not None else options.get("prefix", DEFAULT_PREFIX)
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ConfigurationError(f"Redis key prefix {self.prefix!r} must be non-empty and without braces")
        if idempotency_retention is None:
            try:
                idempotency_retention = float(
                    options.get("idempotency_retention", DEFAULT_IDEMPOTENCY_RETENTION)
                )
            except ValueError as exc:
                raise ConfigurationError(
                    f"idempotency_retention in {self._shown_url!r} is not a number"
                ) from exc
        self.idempotency_retention = float(idempotency_retention)
        driver_query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OWN_OPTIONS]
        self._driver_url = urlunsplit(parts._replace(query=urlencode(driver_query)))
        self._scripts = Scripts()
        self._redis = None
        self._notifier = None
        self._sender = os.urandom(8).hex()
        """This instance's tag on the wake-ups its commits publish (its notifier ignores them)."""
        self._reported: dict[bytes, float] = {}
        """corrupt-key message -> when it was last logged"""

    # queue store

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        return bool(await self._run("extend", [self.prefix, job_id, token, until, now]))

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        if self._notifier is None:
            await asyncio.sleep(timeout)
            return
        await self._notifier.wait(queues, timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        reply = await self._run("dead_letters", [self.prefix, queue or "", offset, limit])
        return codec.dead_letters(reply)

    async def redrive(self, ids: Sequence[str], now: float, available_at: float | None = None) -> int:
        if not ids:
            return 0
        at = now if available_at is None else available_at
        count, woken = await self._run("redrive", [self.prefix, now, at, *ids])
        self._signal(woken)
        return int(count)

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        if ids is not None:
            return int(await self._run("purge", [self.prefix, "ids", *ids])) if ids else 0
        total = 0
        while True:  # bounded: every round deletes a batch or ends the loop
            count = int(await self._run("purge", [self.prefix, "queue", queue or "", _PURGE_BATCH]))
            total += count
            if count < _PURGE_BATCH:
                return total

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        if not queues:
            return []
        reply = await self._run("stats", [self.prefix, now, *queues])
        return [
            QueueStats(
                queue=queue,
                ready=ready,
                scheduled=scheduled,
                leased=leased,
                dead=dead,
                oldest_ready_at=None if oldest is None else float(oldest),
                paused=bool(paused),
            )
            for queue, (ready, scheduled, leased, dead, oldest, paused) in zip(queues, reply, strict=True)
        ]

    async def queue_names(self) -> list[str]:
        # No set of queue names is kept (every commit would pay for it). A queue's sorted sets
        # (P:{queue}:jobs[:<priority>], :leased[:<priority>], :dead) exist exactly while they
        # hold a member, since Redis deletes an empty one, so the queues holding something are the
        # names in those keys (not in :counts, a record of settlements). SCAN walks the keyspace
        # in steps of _SCAN_COUNT slots, never blocking Redis for long.
        client, found = self._client, set()
        pattern = _glob_escaped(self.prefix) + ":{*}:*"
        start = len(self.prefix) + 2
        cursor: bytes | int = 0
        with translated():
            while True:
                cursor, keys = await command(
                    client, "SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT, "TYPE", "zset"
                )
                for key in keys:
                    end = key.rindex(b"}")
                    if key.startswith(b":counts", end + 1):
                        continue
                    # (a key written by something else may not be UTF-8: shown escaped, not fatal)
                    found.add(key[start:end].decode(errors="backslashreplace"))
                if int(cursor) == 0:
                    break
        return sorted(found)

    # topic store

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        if not routes:
            return
        pipeline = self._client.pipeline(transaction=True)
        for event, queue in routes:
            pipeline.execute_command("SADD", f"{self.prefix}:sub:{event}", queue)
            pipeline.execute_command("SADD", f"{self.prefix}:events", event)
        with translated():
            await pipeline.execute()

    async def subscriptions(self) -> list[tuple[str, str]]:
        client = self._client
        with translated():
            events = sorted(await command(client, "SMEMBERS", f"{self.prefix}:events"))
            pipeline = client.pipeline(transaction=False)
            for event in events:
                pipeline.execute_command("SMEMBERS", f"{self.prefix}:sub:{event.decode()}")
            queues = await pipeline.execute()
        return [
            (event.decode(), queue.decode())
            for event, members in zip(events, queues, strict=True)
            for queue in sorted(members)
        ]

    # state store

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        if not keys:
            return {}
        pipeline = self._client.pipeline(transaction=False)
        for key in keys:
            pipeline.execute_command("HMGET", f"{self.prefix}:state:{key}", "v", "n")
        with translated():
            rows = await pipeline.execute(raise_on_error=False)
        try:
            return {
                key: StateRecord(value, int(version))
                for key, (value, version) in zip(keys, rows, strict=True)
                if value is not None
            }
        except (TypeError, ValueError) as exc:  # a row that is an error, or a version not a number
            raise BackendError(self._bad_states(keys, rows)) from exc

    def _bad_states(self, keys: Sequence[str], rows: list[Any]) -> str:
        for key, row in zip(keys, rows, strict=True):
            if isinstance(row, ResponseError):
                return f"Redis key {self.prefix}:state:{key} is not a state hash: {row}"
            if row[0] is not None and not (row[1] or b"").isdigit():
                return f"field n of Redis key {self.prefix}:state:{key} holds {row[1]!r}, not a version"
        return "Redis returned states that cannot be read"  # (not reached: the caller saw one)

    # history store

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        client = self._client
        with translated():
            raw = await command(client, "LRANGE", f"{self.prefix}:history:{correlation_id}", 0, -1)
        return [codec.decode_history(correlation_id, entry) for entry in raw]

    async def instances(
        self,
        started_after: float | None = None,
        limit: int = 100,
        *,
        before: tuple[float, str] | None = None,
        prefix: str | None = None,
    ) -> list[InstanceSummary]:
        low = "-inf" if started_after is None else f"({started_after!r}"
        score, below = ("+inf", "") if before is None else (repr(before[0]), before[1])
        found: list[InstanceSummary] = []
        while True:  # each call looks at _INSTANCES_BUDGET instances at most
            reply = await self._run(
                "instances",
                [self.prefix, low, limit - len(found), score, below, prefix or "", _INSTANCES_BUDGET],
            )
            done, last_score, last_id = int(reply[0]), reply[1], reply[2]
            for i in range(3, len(reply), 3):
                correlation_id = reply[i].decode()
                started_at = float(reply[i + 1])
                latest = codec.decode_history(correlation_id, reply[i + 2]).at if reply[i + 2] else started_at
                found.append(InstanceSummary(correlation_id, started_at, max(started_at, latest)))
            if done or len(found) >= limit or not last_id:
                return found
            score, below = last_score.decode(), last_id.decode()

    async def prune_history(self, before: float) -> int:
        removed = 0
        while True:  # bounded: each round leaves its instances with nothing older than `before`
            count, visited = await self._run("prune_history", [self.prefix, before, _PRUNE_BATCH])
            removed += int(count)
            if visited < _PRUNE_BATCH:
                return removed
