"""``NatsBackend``: every port as a replica of the in-memory state machine, fed by the commit log.

A mutating call is one record of the log (:mod:`conveyor.backends.nats.log`); its result is what
applying it at its position in the stream gives. A read first catches up with the stream's end
(one round trip for the last sequence), then reads the local replica. The design and what an
operator configures are in the package docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, number_option, url_options
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.nats.log import CommitLog, LogSettings
from conveyor.model.errors import ConfigurationError
from conveyor.ports import (
    Commit,
    CommitResult,
    DeadLetter,
    DeadLetterFilter,
    HistoryEntry,
    InstanceSummary,
    JobRecord,
    LeasedJob,
    LeaseInfo,
    MinuteCounts,
    QueueStats,
    StateRecord,
    WorkerInfo,
)

DEFAULT_PREFIX = "conveyor"
_WAKING = frozenset({"commit", "commit_and_lease", "redrive", "resume"})
"""The commands whose records may make jobs due: a waiting worker wakes when one is applied."""
_LEASING = frozenset({"lease", "commit_and_lease"})
"""The commands that lease: applying one also answers how many arrivals its lease saw."""
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


class NatsBackend:
    """``nats://host:port[,host:port...]?prefix=conveyor``: every role on one JetStream stream.

    Options (URL query or keywords; keywords win): ``prefix`` names the stream
    (``CONVEYOR_<prefix>``, subject ``conveyor.<prefix>.log``), ``idempotency_retention``
    (seconds), and for the stream when this instance creates it: ``replicas`` (1),
    ``duplicate_window`` (seconds, 120), ``max_bytes`` (-1: unlimited); ``publish_timeout``
    (seconds, 30) bounds one call's retries of its publish; ``snapshot_every`` (records, 10,000;
    0: never) how often the state is stored in the object store ``CONVEYOR_<prefix>_snapshots``
    and the records before the previous snapshot purged.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str | None = None,
        idempotency_retention: float | None = None,
    ) -> None:
        self.url = url
        options = url_options(url)
        self.prefix = prefix if prefix is not None else options.get("prefix", DEFAULT_PREFIX)
        if not _PREFIX.match(self.prefix):
            raise ConfigurationError(
                f"NATS prefix {self.prefix!r} must be letters, digits, '-' and '_' (it names a stream)"
            )
        self.idempotency_retention = number_option(
            idempotency_retention, options, "idempotency_retention", DEFAULT_IDEMPOTENCY_RETENTION
        )
        settings = LogSettings(
            replicas=int(number_option(None, options, "replicas", 1)),
            duplicate_window=number_option(None, options, "duplicate_window", 120.0),
            publish_timeout=number_option(None, options, "publish_timeout", 30.0),
            max_bytes=int(number_option(None, options, "max_bytes", -1)),
            snapshot_every=int(number_option(None, options, "snapshot_every", 10_000)),
        )
        if settings.publish_timeout >= settings.duplicate_window:
            raise ConfigurationError(
                f"publish_timeout must be shorter than duplicate_window in {url!r}: "
                "a retried publish outside the window could be stored twice"
            )
        parts = urlsplit(url)
        scheme = "tls" if parts.scheme == "tls" else "nats"
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        hosts = (parts.netloc.rsplit("@", 1)[-1] or "127.0.0.1:4222").split(",")
        servers = [f"{scheme}://{credentials}{host}" for host in hosts]
        self._state = MemoryBackend(idempotency_retention=self.idempotency_retention)
        self._arrivals = 0
        """Records applied here that may have made jobs due (commits, redrives, resumes)."""
        self._looked_at = 0
        """``_arrivals`` when this instance last leased: a wait returns at once if it has grown,
        so a record applied between a lease that found nothing and the wait is never missed."""
        self._arrived = asyncio.Event()
        self._log = CommitLog(
            servers,
            f"CONVEYOR_{self.prefix}",
            f"conveyor.{self.prefix}.log",
            settings,
            self._apply,
            self._dump,
            self._restore,
        )

    async def _apply(self, command: str, args: tuple[Any, ...]) -> Any:
        result = await getattr(self._state, command)(*args)
        if command in _WAKING:
            self._arrivals += 1
            self._arrived.set()
        if command in _LEASING:  # what the lease saw: the arrivals up to its own record
            return result, self._arrivals
        return result

    def _dump(self) -> bytes:
        return orjson.dumps(self._state.dump())

    def _restore(self, snapshot: bytes | None) -> None:
        """Start the replica over: empty, or as of a snapshot (a reconnect after close() too)."""
        retention = self.idempotency_retention
        self._state = (
            MemoryBackend(idempotency_retention=retention)
            if snapshot is None
            else MemoryBackend.load(orjson.loads(snapshot), idempotency_retention=retention)
        )

    # lifecycle

    async def connect(self) -> None:
        await self._log.connect()

    async def close(self) -> None:
        await self._log.close()

    # commands: one record each

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        if not commits:
            return []
        results: list[CommitResult] = await self._log.submit("commit", (commits, now))
        return results

    async def commit_and_lease(
        self,
        commits: Sequence[Commit],
        now: float,
        queues: Mapping[str, float],
        limit: int,
        worker: str = "",
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        if not commits:
            return [], await self.lease(queues, limit, now, worker)
        (results, leased), seen = await self._log.submit(
            "commit_and_lease", (commits, now, dict(queues), limit, worker)
        )
        self._looked_at = max(self._looked_at, seen)
        return results, leased

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        # An idle poll writes nothing: the replica, caught up, says whether anything is due.
        if limit <= 0:
            return []
        self._looked_at = self._arrivals
        if not self._state.has_due(queues, now):
            await self._log.catch_up()
            self._looked_at = self._arrivals
            if not self._state.has_due(queues, now):
                return []
        leased, seen = await self._log.submit("lease", (dict(queues), limit, now, worker))
        self._looked_at = max(self._looked_at, seen)
        return list(leased)

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        extended: bool = await self._log.submit("extend", (job_id, token, until, now))
        return extended

    async def redrive(self, ids: Sequence[str], now: float, available_at: float | None = None) -> int:
        if not ids:
            return 0
        count: int = await self._log.submit("redrive", (list(ids), now, available_at))
        return count

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        count: int = await self._log.submit("purge", (None if ids is None else list(ids), queue))
        return count

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        await self._log.catch_up()
        known = set(await self._state.subscriptions())
        if any(tuple(route) not in known for route in routes):
            await self._log.submit("register_subscriptions", (list(routes),))

    async def pause(self, queue: str, now: float) -> bool:
        paused: bool = await self._log.submit("pause", (queue, now))
        return paused

    async def resume(self, queue: str) -> bool:
        resumed: bool = await self._log.submit("resume", (queue,))
        return resumed

    async def prune_history(self, before: float) -> int:
        count: int = await self._log.submit("prune_history", (before,))
        return count

    async def prune_counts(self, before: float) -> int:
        count: int = await self._log.submit("prune_counts", (before,))
        return count

    async def cancel_jobs(
        self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry] = ()
    ) -> list[str]:
        if not ids:
            return []
        cancelled: list[str] = await self._log.submit("cancel_jobs", (list(ids), now, list(history)))
        return cancelled

    async def request_cancel(self, job_id: str) -> bool:
        requested: bool = await self._log.submit("request_cancel", (job_id,))
        return requested

    async def register_worker(self, worker: WorkerInfo) -> None:
        await self._log.submit("register_worker", (worker,))

    async def unregister_worker(self, worker_id: str) -> None:
        await self._log.submit("unregister_worker", (worker_id,))

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        # a command: the call forgets the workers not seen since, in every replica alike
        found: list[WorkerInfo] = await self._log.submit("workers", (alive_since,))
        return found

    # reads: caught up with the stream, then the replica

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        if self._arrivals != self._looked_at:  # something came since the last lease looked
            self._looked_at = self._arrivals
            return
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        await self._log.catch_up()
        return await self._state.dead_letters(queue, limit, offset)

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        await self._log.catch_up()
        return await self._state.stats(queues, now)

    async def queue_names(self) -> list[str]:
        await self._log.catch_up()
        return await self._state.queue_names()

    async def subscriptions(self) -> list[tuple[str, str]]:
        await self._log.catch_up()
        return await self._state.subscriptions()

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        await self._log.catch_up()
        return await self._state.get_states(keys)

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        await self._log.catch_up()
        return await self._state.history(correlation_id)

    async def instances(
        self,
        started_after: float | None = None,
        limit: int = 100,
        *,
        before: tuple[float, str] | None = None,
        prefix: str | None = None,
    ) -> list[InstanceSummary]:
        await self._log.catch_up()
        return await self._state.instances(started_after, limit, before=before, prefix=prefix)

    async def paused_queues(self) -> dict[str, float]:
        await self._log.catch_up()
        return await self._state.paused_queues()

    async def leases(self, queue: str | None, limit: int = 100, after: str | None = None) -> list[LeaseInfo]:
        await self._log.catch_up()
        return await self._state.leases(queue, limit, after)

    async def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        await self._log.catch_up()
        return await self._state.queue_counts(queues, since)

    async def job(self, job_id: str, now: float) -> JobRecord | None:
        await self._log.catch_up()
        return await self._state.job(job_id, now)

    async def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        await self._log.catch_up()
        return await self._state.job_for_key(queue, key, now)

    async def job_history(self, job_id: str) -> list[HistoryEntry]:
        await self._log.catch_up()
        return await self._state.job_history(job_id)

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        await self._log.catch_up()
        return await self._state.cancel_requests(job_ids)

    async def find_dead_letters(
        self, where: DeadLetterFilter, limit: int = 100, before: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        await self._log.catch_up()
        return await self._state.find_dead_letters(where, limit, before)

    async def count_dead_letters(self, where: DeadLetterFilter) -> int:
        await self._log.catch_up()
        return await self._state.count_dead_letters(where)

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        await self._log.catch_up()
        return await self._state.dead_letter(dead_id)
