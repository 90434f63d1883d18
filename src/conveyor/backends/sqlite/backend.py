"""``SQLiteBackend``: the async face of the embedded backend.

The sqlite3 module blocks, so every database call of one backend instance runs on one dedicated
thread (a single-thread executor that owns the connection); the event loop only awaits it. Calls
from many coroutines queue up on that thread in order, which also serializes this instance's
transactions. Other processes using the same file coordinate through SQLite's locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, number_option, url_options
from conveyor.backends.sqlite.store import Store
from conveyor.backends.sqlite.wakeup import Watcher
from conveyor.model.errors import BackendError, BackendUnavailableError, ConfigurationError
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

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_WAKEUP_INTERVAL = 0.001
DEFAULT_WAKEUP_IDLE_INTERVAL = 0.05


def database_path(url: str) -> str:
    """The file path of a ``sqlite:`` URL: three slashes then a relative path, four for absolute.

    >>> database_path("sqlite:///data/conveyor.db"), database_path("sqlite:////var/lib/c.db")
    ('data/conveyor.db', '/var/lib/c.db')
    """
    parts = urlsplit(url)
    hint = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    if parts.netloc:
        raise ConfigurationError(f"a SQLite URL names no host ({url!r}): {hint}")
    path = unquote(parts.path)[1:]
    if not path:
        raise ConfigurationError(f"the SQLite URL {url!r} names no file: {hint}")
    if path == ":memory:":
        raise ConfigurationError(
            "sqlite:///:memory: is not supported (workers and wake-ups need a file); "
            "use memory:// for a throwaway backend"
        )
    return path


def _flag(given: bool | None, options: Mapping[str, str], name: str) -> bool:
    if given is not None:
        return given
    text = options.get(name, "0").strip().lower()
    if text not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ConfigurationError(f"URL option {name}={options[name]!r} is not 0 or 1")
    return text in ("1", "true", "yes")


class SQLiteBackend:
    """``sqlite:///path``: the embedded default, durable in one file shared by any number of
    worker processes on one machine.

    Options (keyword or URL query string, keyword wins):

    * ``idempotency_retention``: seconds an idempotency key stays taken after its job's ack or
      dead-lettering (default 24 h);
    * ``busy_timeout``: the longest, in seconds, an operation waits for another process's write
      lock before it fails with :class:`~conveyor.model.errors.BackendError` (default 10);
    * ``wakeup_interval``: how often idle workers look for commits of other processes (default
      0.001 s; only while some worker is idle);
    * ``wakeup_idle_interval``: how often once nothing has happened for a second (default 0.05 s:
      the longest a job another process enqueues after a quiet spell waits for an idle worker);
    * ``create_dirs``: ``1`` creates the file's directory when it is missing; by default a
      missing directory is refused (a typo in a path should not grow a new empty database).

    >>> backend = SQLiteBackend("sqlite:///var/conveyor.db?busy_timeout=30")
    >>> backend.busy_timeout
    30.0
    """

    def __init__(
        self,
        url: str = "sqlite:///conveyor.db",
        *,
        idempotency_retention: float | None = None,
        busy_timeout: float | None = None,
        wakeup_interval: float | None = None,
        wakeup_idle_interval: float | None = None,
        create_dirs: bool | None = None,
    ) -> None:
        self.url = url
        self.path = database_path(url)
        options = url_options(url)
        self.create_dirs = _flag(create_dirs, options, "create_dirs")
        self.idempotency_retention = number_option(
            idempotency_retention, options, "idempotency_retention", DEFAULT_IDEMPOTENCY_RETENTION
        )
        self.busy_timeout = number_option(busy_timeout, options, "busy_timeout", DEFAULT_BUSY_TIMEOUT)
        self.wakeup_interval = number_option(
            wakeup_interval, options, "wakeup_interval", DEFAULT_WAKEUP_INTERVAL
        )
        self.wakeup_idle_interval = number_option(
            wakeup_idle_interval, options, "wakeup_idle_interval", DEFAULT_WAKEUP_IDLE_INTERVAL
        )
        if (
            self.busy_timeout < 0
            or self.wakeup_interval <= 0
            or self.wakeup_idle_interval <= 0
            or self.idempotency_retention < 0
        ):
            raise ConfigurationError(
                "busy_timeout and idempotency_retention must not be negative, "
                "wakeup_interval and wakeup_idle_interval must be positive"
            )
        self._executor: ThreadPoolExecutor | None = None
        self._store: Store | None = None
        self._watcher: Watcher | None = None
        self._connecting = asyncio.Lock()
        # generation of the wake-up watcher when each set of queues was last leased from
        self._leased_at_generation: dict[frozenset[str], int] = {}

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.url!r})"

    # lifecycle

    async def connect(self) -> None:
        """Open the file (creating it, its directory and the schema if needed)."""
        async with self._connecting:
            if self._store is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sqlite")
            try:
                store = await asyncio.get_running_loop().run_in_executor(executor, self._open_store)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor, self._store = executor, store
            self._watcher = Watcher(
                self.path, interval=self.wakeup_interval, idle_interval=self.wakeup_idle_interval
            )

    def _open_store(self) -> Store:
        directory = Path(self.path).parent
        if not directory.is_dir():
            if not self.create_dirs:
                raise ConfigurationError(
                    f"the directory of the SQLite database {self.path!r} does not exist: create it, "
                    "or add ?create_dirs=1 to the URL to have it created"
                )
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendUnavailableError(f"cannot create the directory of {self.path!r}: {exc}") from exc
        return Store(
            self.path,
            busy_timeout=self.busy_timeout,
            idempotency_retention=self.idempotency_retention,
        )

    async def close(self) -> None:
        executor, store, watcher = self._executor, self._store, self._watcher
        self._executor = self._store = self._watcher = None
        if executor is None or store is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, store.close)
            if watcher is not None:
                await loop.run_in_executor(executor, watcher.close)
        finally:
            executor.shutdown(wait=False)

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise BackendError(f"{self!r} is not connected: await connect() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def _store_or_raise(self) -> Store:
        if self._store is None:
            raise BackendError(f"{self!r} is not connected: await connect() first")
        return self._store

    # queue store

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        store = self._store_or_raise()
        if self._watcher is not None:
            self._leased_at_generation[frozenset(queues)] = self._watcher.generation
        return await self._run(store.lease, dict(queues), limit, now, worker)

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        return await self._run(self._store_or_raise().extend, job_id, token, until, now)

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return soon after any process commits to the file (jobs may have arrived), at once if
        that happened since these queues were last leased from, or after ``timeout`` seconds."""
        watcher = self._watcher
        if watcher is None:
            raise BackendError(f"{self!r} is not connected: await connect() first")
        if timeout <= 0:
            return
        since = self._leased_at_generation.pop(frozenset(queues), None)
        await watcher.wait(since, timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return await self._run(self._store_or_raise().dead_letters, queue, limit, offset)

    async def redrive(self, ids: Sequence[str], now: float, available_at: float | None = None) -> int:
        count = await self._run(self._store_or_raise().redrive, list(ids), now, available_at)
        if count:
            self._notify()
        return count

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        return await self._run(self._store_or_raise().purge, None if ids is None else list(ids), queue)

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        return await self._run(self._store_or_raise().stats, list(queues), now)

    async def queue_names(self) -> list[str]:
        return await self._run(self._store_or_raise().queue_names)

    # topic store

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        await self._run(self._store_or_raise().register_subscriptions, list(routes))

    async def subscriptions(self) -> list[tuple[str, str]]:
        return await self._run(self._store_or_raise().subscriptions)

    # state store

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        return await self._run(self._store_or_raise().get_states, list(keys))

    # history store

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        return await self._run(self._store_or_raise().history, correlation_id)

    async def prune_history(self, before: float) -> int:
        return await self._run(self._store_or_raise().prune_history, before)

    async def instances(
        self,
        started_after: float | None = None,
        limit: int = 100,
        *,
        before: tuple[float, str] | None = None,
        prefix: str | None = None,
    ) -> list[InstanceSummary]:
        return await self._run(self._store_or_raise().instances, started_after, limit, before, prefix)

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        if not commits:
            return []
        results, made_available = await self._run(self._store_or_raise().commit, list(commits), now)
        if made_available:
            self._notify()
        return results

    def _notify(self) -> None:
        """Wake this instance's idle workers now (other processes' see the file change)."""
        if self._watcher is not None:
            self._watcher.notify()

    # operations

    async def pause(self, queue: str, now: float) -> bool:
        return await self._run(self._store_or_raise().pause, queue, now)

    async def resume(self, queue: str) -> bool:
        resumed = await self._run(self._store_or_raise().resume, queue)
        if resumed:
            self._notify()
        return resumed

    async def paused_queues(self) -> dict[str, float]:
        return await self._run(self._store_or_raise().paused_queues)

    async def leases(self, queue: str | None, limit: int = 100, after: str | None = None) -> list[LeaseInfo]:
        return await self._run(self._store_or_raise().leases, queue, limit, after)

    async def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        return await self._run(self._store_or_raise().queue_counts, list(queues), since)

    async def prune_counts(self, before: float) -> int:
        return await self._run(self._store_or_raise().prune_counts, before)

    async def job(self, job_id: str, now: float) -> JobRecord | None:
        return await self._run(self._store_or_raise().job, job_id, now)

    async def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        return await self._run(self._store_or_raise().job_for_key, queue, key, now)

    async def job_history(self, job_id: str) -> list[HistoryEntry]:
        return await self._run(self._store_or_raise().job_history, job_id)

    async def cancel_jobs(
        self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry] = ()
    ) -> list[str]:
        return await self._run(self._store_or_raise().cancel_jobs, list(ids), now, list(history))

    async def request_cancel(self, job_id: str) -> bool:
        return await self._run(self._store_or_raise().request_cancel, job_id)

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        return await self._run(self._store_or_raise().cancel_requests, list(job_ids))

    async def register_worker(self, worker: WorkerInfo) -> None:
        await self._run(self._store_or_raise().register_worker, worker)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._run(self._store_or_raise().unregister_worker, worker_id)

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        return await self._run(self._store_or_raise().workers, alive_since)

    async def find_dead_letters(
        self, where: DeadLetterFilter, limit: int = 100, before: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        return await self._run(self._store_or_raise().find_dead_letters, where, limit, before)

    async def count_dead_letters(self, where: DeadLetterFilter) -> int:
        return await self._run(self._store_or_raise().count_dead_letters, where)

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        return await self._run(self._store_or_raise().dead_letter, dead_id)
