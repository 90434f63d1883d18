"""``RedisBackend``: every port on one Redis, one Lua script per lease batch and per commit batch.

The key layout, the Cluster caveat and the durability notes are in the package docstring.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, url_options
from conveyor.backends.redis import codec
from conveyor.backends.redis.notifier import Notifier
from conveyor.backends.redis.scripts import NOTHING, Arg, Packed, Scripts, command
from conveyor.model.errors import (
    BackendError,
    BackendUnavailableError,
    CommitRejectedError,
    ConfigurationError,
)
from conveyor.ports import (
    Commit,
    CommitResult,
    DeadLetter,
    HistoryEntry,
    InstanceSummary,
    LeasedJob,
    Outcome,
    QueueStats,
    Settlement,
    StateRecord,
)

logger = logging.getLogger("conveyor.backends.redis")

DEFAULT_PREFIX = "conveyor"
MIN_REDIS_VERSION = (6, 2)
_OWN_OPTIONS = ("prefix", "idempotency_retention")
_PURGE_BATCH = 1000
_PRUNE_BATCH = 100
_SCAN_COUNT = 1000


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a SCAN ``MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


_REPEAT_PROBLEM_AFTER = 60.0
"""Seconds before the same corrupt-key message is logged again (a skipped queue meets it on every
lease call)."""

_TRANSIENT_REPLIES = ("BUSY", "MASTERDOWN")
"""Error replies that pass (a long script of another client, a replica without its primary)."""


@contextmanager
def _translated() -> Iterator[None]:
    """Translate redis-py's exceptions into conveyor's at the backend edge.

    Unavailable means "retry later": the server is unreachable, loading its data, busy, or a
    replica after a failover. Wrong credentials are a BackendError: retrying cannot fix them.
    """
    try:
        yield
    except (AuthenticationError, AuthorizationError) as exc:
        raise BackendError(f"Redis refused the connection's credentials: {exc}") from exc
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError, OSError) as exc:
        raise BackendUnavailableError(f"Redis is unavailable: {exc}") from exc
    except RedisError as exc:
        if str(exc).startswith(_TRANSIENT_REPLIES):
            raise BackendUnavailableError(f"Redis is unavailable: {exc}") from exc
        raise BackendError(f"Redis failed: {exc}") from exc


class RedisBackend:
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
        self._redis: Redis | None = None
        self._notifier: Notifier | None = None
        self._sender = os.urandom(8).hex()
        """This instance's tag on the wake-ups its commits publish (its notifier ignores them)."""
        self._reported: dict[bytes, float] = {}
        """corrupt-key message -> when it was last logged"""

    # lifecycle

    async def connect(self) -> None:
        """Open the connection pool and load the scripts (raises if Redis is unreachable)."""
        if self._redis is not None:
            return
        try:
            client = Redis.from_url(
                self._driver_url,
                # No silent retries: a retried script could apply twice. The runtime retries.
                retry=Retry(NoBackoff(), 0),
                # A silent network partition must surface as an error, not hang a worker forever.
                socket_connect_timeout=5.0,
                socket_timeout=30.0,
                socket_keepalive=True,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid Redis URL {self._shown_url!r}: {exc}") from exc
        try:
            with _translated():
                info = await command(client, "INFO", "server")
                await self._scripts.load(client)
        except TypeError as exc:
            # redis-py meets unknown URL options only when it opens the first connection
            await client.aclose()
            raise ConfigurationError(f"invalid Redis URL {self._shown_url!r}: {exc}") from exc
        except BaseException:
            await client.aclose()
            raise
        version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".")[:2])
        if version < MIN_REDIS_VERSION:
            await client.aclose()
            raise ConfigurationError(
                f"conveyor needs Redis {'.'.join(map(str, MIN_REDIS_VERSION))} or newer "
                f"(ZADD LT); {self._shown_url!r} runs {info.get('redis_version')}"
            )
        self._redis = client
        self._notifier = Notifier(client, lambda queue: self._key(queue, "notify"), self._sender)

    async def close(self) -> None:
        """Stop the wake-up listener and close every connection."""
        notifier, client = self._notifier, self._redis
        self._notifier = self._redis = None
        if notifier is not None:
            await notifier.close()
        if client is not None:
            await client.aclose()

    @property
    def _client(self) -> Redis:
        if self._redis is None:
            raise BackendError("the Redis backend is not connected: call connect() first")
        return self._redis

    def _key(self, queue: str, suffix: str) -> str:
        return f"{self.prefix}:{{{queue}}}:{suffix}"

    async def _run(self, script: str, args: list[Arg], more: Packed = NOTHING) -> Any:
        client = self._client
        with _translated():
            return await self._scripts.run(client, script, args, more)

    # queue store

    async def lease(self, queues: Mapping[str, float], limit: int, now: float) -> list[LeasedJob]:
        if not queues or limit <= 0:
            return []
        return self._leased(await self._run("lease", self._lease_args(queues, limit, now)), queues, now)

    def _leased(self, reply: list[Any], queues: Mapping[str, float], now: float) -> list[LeasedJob]:
        jobs, problems = reply
        if problems:
            self._report(problems)
        return codec.leased_jobs(jobs, queues, now)

    def _report(self, problems: list[bytes]) -> None:
        """Log each corrupt key a script met and skipped or moved aside, a repeated one (a skipped
        queue) once a minute."""
        clock = time.monotonic()
        if len(self._reported) > 1000:  # each dead-lettered job has its own message: forget them
            self._reported.clear()
        for problem in problems:
            if clock - self._reported.get(problem, -_REPEAT_PROBLEM_AFTER) >= _REPEAT_PROBLEM_AFTER:
                self._reported[problem] = clock
                logger.error("Corrupt Redis key: %s", problem.decode(errors="backslashreplace"))

    def _lease_args(self, queues: Mapping[str, float], limit: int, now: float) -> list[Arg]:
        if self._notifier is not None:
            self._notifier.consume(queues)
        args: list[Arg] = [self.prefix, now, limit]
        for queue, seconds in queues.items():
            args += (queue, seconds)
        return args

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

    async def redrive(self, ids: Sequence[str], now: float) -> int:
        if not ids:
            return 0
        count, woken = await self._run("redrive", [self.prefix, now, *ids])
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
            )
            for queue, (ready, scheduled, leased, dead, oldest) in zip(queues, reply, strict=True)
        ]

    async def queue_names(self) -> list[str]:
        # No set of queue names is kept (every commit would pay for it). A queue's sorted sets
        # (P:{queue}:jobs, :leased, :dead) exist exactly while they hold a member, since Redis
        # deletes an empty one, so the queues holding something are the names in those keys. SCAN
        # walks the keyspace in steps of _SCAN_COUNT slots, never blocking Redis for long.
        client, found = self._client, set()
        pattern = _glob_escaped(self.prefix) + ":{*}:*"
        start = len(self.prefix) + 2
        cursor: bytes | int = 0
        with _translated():
            while True:
                cursor, keys = await command(
                    client, "SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT, "TYPE", "zset"
                )
                for key in keys:
                    # (a key written by something else may not be UTF-8: shown escaped, not fatal)
                    found.add(key[start : key.rindex(b"}")].decode(errors="backslashreplace"))
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
        with _translated():
            await pipeline.execute()

    async def subscriptions(self) -> list[tuple[str, str]]:
        client = self._client
        with _translated():
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
        with _translated():
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
        with _translated():
            raw = await command(client, "LRANGE", f"{self.prefix}:history:{correlation_id}", 0, -1)
        return [codec.decode_history(correlation_id, entry) for entry in raw]

    async def instances(self, started_after: float | None = None, limit: int = 100) -> list[InstanceSummary]:
        low = "-inf" if started_after is None else f"({started_after!r}"
        reply = await self._run("instances", [self.prefix, low, limit])
        found = []
        for i in range(0, len(reply), 3):
            correlation_id = reply[i].decode()
            started_at = float(reply[i + 1])
            latest = codec.decode_history(correlation_id, reply[i + 2]).at if reply[i + 2] else started_at
            found.append(InstanceSummary(correlation_id, started_at, max(started_at, latest)))
        return found

    async def prune_history(self, before: float) -> int:
        removed = 0
        while True:  # bounded: each round leaves its instances with nothing older than `before`
            count, visited = await self._run("prune_history", [self.prefix, before, _PRUNE_BATCH])
            removed += int(count)
            if visited < _PRUNE_BATCH:
                return removed

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        """Apply each commit atomically and independently, the batch in one ``commit.lua`` call.

        A batch is never applied in part and then raised. ``commit.lua`` checks every key the
        batch needs before it writes anything; if one commit needs a corrupt key (of the wrong
        type, or holding a value that cannot be parsed: written by something else than conveyor),
        nothing at all is written and a BackendError names the key and the commit. Raising is
        allowed only when nothing was applied: the runtime then splits the batch and commits the
        rest, and the commit left alone gets its error. (A lost connection raises too, with the
        batch in doubt; a retry is safe because every settlement is fenced by its lease token.)
        """
        if not commits:
            return []
        reply = await self._run("commit", self._commit_args(commits, now), codec.commit_args(commits))
        results, woken = self._committed(commits, reply)
        self._signal(woken)
        return results

    def _committed(
        self, commits: Sequence[Commit], reply: list[Any]
    ) -> tuple[list[CommitResult], list[bytes]]:
        """The results and woken queues of a ``commit.lua`` reply; raises if it rejected the batch."""
        results, woken, rejected, repaired = reply
        if repaired:
            self._report(repaired)
        if rejected:
            # nothing was applied: the committer narrows the batch down to the culprit
            raise CommitRejectedError(codec.rejection(commits, rejected))
        return codec.commit_results(commits, results), woken

    async def commit_and_lease(
        self, commits: Sequence[Commit], now: float, queues: Mapping[str, float], limit: int
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """The two scripts back to back on one connection: one round trip.

        If the commit fails, the jobs the lease took are given back at once (released, their
        attempt not spent) rather than left leased to no one until their lease expires. If only
        the lease fails, the commit's results are returned without jobs: the worker's own lease
        loop meets the lease's error and reports it.
        """
        if not commits or not queues or limit <= 0:
            return await self.commit(commits, now), await self.lease(queues, limit, now)
        calls = [
            ("commit", self._commit_args(commits, now), codec.commit_args(commits)),
            ("lease", self._lease_args(queues, limit, now), NOTHING),
        ]
        with _translated():
            committed, leased = await self._scripts.run_many(self._client, calls)
        jobs: list[LeasedJob] = []
        if isinstance(leased, ResponseError):
            logger.warning("Redis lease riding on a commit failed: %s", leased)
        else:
            jobs = self._leased(leased, queues, now)
        try:
            if isinstance(committed, ResponseError):
                with _translated():
                    raise committed
            results, woken = self._committed(commits, committed)
        except BackendError:
            await self._give_back(jobs, now)
            raise
        if len(jobs) < limit:  # every due job of these queues is leased: no one here to wake for them
            woken = [queue for queue in woken if queue.decode() not in queues]
        self._signal(woken)
        return results, jobs

    async def _give_back(self, jobs: list[LeasedJob], now: float) -> None:
        if not jobs:
            return
        releases = [Commit(Settlement(job.id, job.token, Outcome.RELEASE)) for job in jobs]
        try:
            await self.commit(releases, now)
        except BackendError as exc:
            logger.warning(
                "could not give back %d jobs leased beside a failed commit; they run again when "
                "their lease expires: %s",
                len(jobs),
                exc,
            )

    def _commit_args(self, commits: Sequence[Commit], now: float) -> list[Arg]:
        return [self.prefix, now, self.idempotency_retention, len(commits), self._sender]

    def _signal(self, queues: list[bytes]) -> None:
        # wake this instance's waiters at once, without the round trip through pub/sub
        if self._notifier is not None and queues:
            self._notifier.signal(queue.decode() for queue in queues)
