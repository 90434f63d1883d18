"""Wake-ups for idle workers: commits of any process, seen through ``PRAGMA data_version``.

SQLite has no notifications between processes, but ``PRAGMA data_version`` changes whenever another
connection (of this process or any other) has committed, and reading it costs microseconds (it
looks at the WAL index in shared memory). A watcher thread with its own connection polls it every
``interval`` seconds, only while some coroutine is waiting, and resolves the waiters' futures.
Once nothing has changed for :data:`QUIET_AFTER` seconds it polls every ``idle_interval`` instead
(see :func:`poll_interval`): a worker that stays idle then costs 20 polls a second, not 1,000,
and the first job another process enqueues after a quiet spell waits at most that much longer.

Missed wake-ups are ruled out by generations: every detected change (and every local commit that
made jobs available) bumps ``generation``. A caller notes the generation before it looks for jobs
(:meth:`Watcher.generation`) and waits with it: if anything changed since, the wait returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time

QUIET_AFTER = 1.0
"""Seconds without a change before polling slows down. Any commit counts, this process's too:
the watcher's connection sees every other connection's commits, its own backend's included."""


def poll_interval(quiet_for: float, interval: float, idle_interval: float) -> float:
    """Seconds until the next poll, after ``quiet_for`` seconds without any sign of work."""
    return interval if quiet_for < QUIET_AFTER else max(interval, idle_interval)


class Watcher:
    """Polls one database file's ``data_version`` for the waiters of one backend instance."""

    def __init__(self, path: str, *, interval: float, idle_interval: float) -> None:
        self._path = path
        self._interval = interval
        self._idle_interval = idle_interval
        self._lock = threading.Condition()
        self._generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closed = False
        self.polls = 0
        """``data_version`` reads so far (tests read it)."""
        self._thread = threading.Thread(target=self._run, name=f"conveyor-sqlite-wakeup:{path}", daemon=True)
        self._thread.start()

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """A change seen first-hand (this instance committed new jobs): wake the waiters now."""
        with self._lock:
            self._bump()

    def _bump(self) -> None:
        # Called with the lock held.
        self._generation += 1
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            # A waiter whose loop has closed needs no wake-up (and must not kill the watcher).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, since: int | None, timeout: float) -> None:
        """Return once the generation differs from ``since`` (now if it already does), or after
        ``timeout`` seconds. ``since=None`` waits for the next change."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if since is not None and since != self._generation:
                return
            self._waiters.append((loop, future))
            self._lock.notify()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            # A timed-out (cancelled) future must leave the list too, or the watcher keeps polling.
            with self._lock:
                self._waiters = [(lp, f) for lp, f in self._waiters if f is not future]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._bump()
            self._lock.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the backend's own connection reports the problem; waits just time out
        try:
            last = self._data_version(db)
            active_at = time.monotonic()
            while True:
                with self._lock:
                    while not self._waiters and not self._closed:
                        self._lock.wait()
                    if self._closed:
                        return
                version = self._data_version(db)
                self.polls += 1
                now = time.monotonic()
                if version != last:
                    last, active_at = version, now
                    with self._lock:
                        self._bump()
                time.sleep(poll_interval(now - active_at, self._interval, self._idle_interval))
        finally:
            db.close()

    @staticmethod
    def _data_version(db: sqlite3.Connection) -> int | None:
        try:
            version: int = db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None  # e.g. busy during WAL recovery: compares as a change, a spurious wake-up
        return version


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
