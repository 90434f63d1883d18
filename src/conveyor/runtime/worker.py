"""The worker: leases jobs in batches into its free slots, runs each job's attempt
(:mod:`~conveyor.runtime.attempt`) and commits the outcome with its effects."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.definitions.service import QueueWorker
from conveyor.model.errors import BackendError, CommitRejectedError
from conveyor.ports import Commit, CommitResult, CommitStatus, LeasedJob, Outcome, Settlement, WorkerInfo
from conveyor.runtime import outcome, registry
from conveyor.runtime.attempt import CANCEL_GRACE, Attempts
from conveyor.runtime.committer import Committer
from conveyor.runtime.dead_letter import DeadLetters
from conveyor.runtime.error_text import describe_error, error_info
from conveyor.runtime.observers import JobHistory, JobMetrics
from conveyor.runtime.runtime import Runtime
from conveyor.runtime.watch import WATCH_INTERVAL, Watch

logger = logging.getLogger("conveyor.worker")

HURRY_BOUND = 1.0
"""After ``stop(now=True)`` (a second signal), how long pending releases may take to commit before
the worker exits without them (their jobs then run again when their leases expire)."""
MAX_TRACKED_DUE = 100_000
"""Due times of retries and delayed jobs the lease loop wakes for; beyond this many, a job waits
for the next poll instead (a bound on memory when jobs fail far faster than they come due)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one worker runs.

    * ``concurrency``: jobs run at once (asyncio tasks).
    * ``poll_interval``: longest idle wait before looking again. Backends wake workers at once on
      new jobs, and a worker wakes on time for the retries it schedules and the delayed jobs its
      handlers enqueue; so this bounds only how late a delayed job enqueued elsewhere (another
      process, ``app.enqueue(delay=...)``, another worker's retry) may start.
    * ``shutdown_grace``: on stop, how long running jobs may finish before they are cancelled and
      released (even a handler that ignores cancellation: it is abandoned after ``CANCEL_GRACE``).
    * ``heartbeat_interval``: how often the serving worker's record in the worker registry is
      renewed (see :mod:`~conveyor.runtime.registry`); it counts as dead after three intervals.
    * ``watch_interval``: while jobs run, how often the worker asks the backend, in one call for
      all of them, which ones an operator asked to cancel (``ctx.cancel_requested``); nothing is
      asked while no job runs (see :mod:`~conveyor.runtime.watch`).
    """

    concurrency: int = 50
    poll_interval: float = 0.5
    shutdown_grace: float = 30.0
    commit_batch: int = 500
    heartbeat_interval: float = registry.HEARTBEAT_INTERVAL
    watch_interval: float = WATCH_INTERVAL


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A release nobody waits for: its failure is logged, and the job runs after its lease."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not release a job leased while stopping: %s", future.exception())


class Worker:
    """Works the given queues until :meth:`stop`; SIGTERM handling belongs to the caller."""

    def __init__(self, runtime: Runtime, queues: Sequence[QueueWorker[Any]], config: WorkerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.host, self.pid = registry.this_process()
        self.id = registry.new_worker_id(self.host, self.pid)
        """what its leases record as their worker, and its key in the worker registry"""
        self.started_at = runtime.clock.now()
        self.queues = {definition.name: definition for definition in queues}
        self.lease_map = {name: d.lifecycle.lease_seconds for name, d in self.queues.items()}
        history = JobHistory(runtime) if runtime.history_enabled else None
        self._metrics = JobMetrics(runtime.metrics) if runtime.metrics.enabled else None
        """None when metrics are off (decided when the app connects, before a worker is built)"""
        self._dead_letters = DeadLetters(runtime, self.queues, history)
        self.watch = Watch(runtime.backend, runtime.clock, config.watch_interval)
        self._attempts = Attempts(
            runtime, self.queues, history, self._metrics, self._dead_letters, self.watch
        )
        self._committer = Committer(
            runtime.backend, runtime.clock, max_batch=config.commit_batch, refill=self
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._reserved = 0
        """slots claimed by a lease call on its way (the lease loop's or one riding on a commit)"""
        self._running = self.watch.running
        """jobs whose handler (or dead-letter hook) runs: what shutdown cancels, then releases"""
        self._slot_free = asyncio.Event()
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._nudge = asyncio.Event()
        self._releasing = False
        self._due: list[float] = []
        """heap of times a job this worker knows of comes due (its retries, its handlers' delayed
        enqueues): the idle wait ends at the earliest, not a poll later"""
        self._idle_until: float | None = None
        """when the lease loop's idle wait ends (None while it is not waiting)"""
        self.processed = 0
        self.lease_rounds = 0
        """lease calls made: tests wait on it to know the worker has looked for jobs"""

    def stop(self, *, now: bool = False) -> None:
        """Stop leasing; running jobs get ``shutdown_grace`` to finish, then are released.

        ``now`` (what a second SIGTERM asks for) ends the grace period at once, even during it.
        """
        self._stop.set()
        if now:
            self._hurry.set()

    def info(self) -> WorkerInfo:
        """Its record for the worker registry, as of now."""
        return WorkerInfo(
            self.id,
            self.host,
            self.pid,
            tuple(sorted(self.queues)),
            self.config.concurrency,
            self.started_at,
            self.runtime.clock.now(),
            self.processed,
        )

    @property
    def abandoned(self) -> int:
        """Handlers that ignored cancellation and are still running, their attempts settled."""
        return len(self._attempts.abandoned)

    @property
    def lease_extensions(self) -> int:
        """Leases extended by heartbeats: tests wait on it."""
        return self._attempts.lease_extensions

    async def run(self) -> None:
        if not self.queues:
            await self._stop.wait()
            return
        committer = asyncio.create_task(self._committer.run(), name="conveyor-committer")
        watch = asyncio.create_task(self.watch.run(), name="conveyor-watch")
        names = sorted(self.queues)
        logger.info("worker started: queues %s, concurrency %d", ", ".join(names), self.config.concurrency)
        try:
            await self._lease_loop(names)
        finally:
            try:
                await self._drain()
            finally:
                watch.cancel()
                await asyncio.wait({watch})
            await self._committer.close()
            # in a hurry, not the committer's minute of retries on a backend that is down
            if self._hurry.is_set() and not (await asyncio.wait({committer}, timeout=HURRY_BOUND))[0]:
                committer.cancel()
                await asyncio.wait({committer})
                logger.warning("stopped with commits pending; their jobs run again when their leases expire")
            else:
                await committer
            logger.info("worker stopped after settling %d jobs", self.processed)

    async def _lease_loop(self, names: list[str]) -> None:
        backend, clock, config = self.runtime.backend, self.runtime.clock, self.config
        backoff = 0.0
        while not self._stop.is_set():
            free = self.reserve(0)
            if free <= 0:
                self._slot_free.clear()
                await self._first(self._slot_free.wait(), self._stop.wait())
                continue
            leased_at = clock.now()
            try:
                jobs = await backend.lease(self.lease_map, free, leased_at, self.id)
                self.lease_rounds += 1
            except Exception as exc:
                self._reserved -= free
                backoff = min(max(backoff * 2, 0.1), 5.0)
                if isinstance(exc, BackendError):
                    logger.warning("lease failed (%s); retrying in %.1fs", exc, backoff)
                else:  # a bug, or a driver error its backend did not translate: keep serving
                    logger.error("lease failed unexpectedly; retrying in %.1fs", backoff, exc_info=exc)
                await self._first(asyncio.sleep(backoff), self._stop.wait())
                continue
            if backoff:
                logger.info("backend reachable again; leasing resumed")
                backoff = 0.0
            self._start(jobs, free)
            if len(jobs) < free:
                due = self._due
                while due and due[0] <= leased_at:  # that lease call saw them (or another worker had them)
                    heapq.heappop(due)
                now = clock.now()
                idle = config.poll_interval if not due else max(0.0, min(config.poll_interval, due[0] - now))
                self._idle_until = now + idle
                self._nudge.clear()
                try:
                    await self._first(
                        backend.wait_for_jobs(names, idle),
                        clock.sleep(idle),
                        self._stop.wait(),
                        self._nudge.wait(),
                    )
                finally:
                    self._idle_until = None

    def _expect(self, due: float) -> None:
        """A job this worker may lease comes due at ``due``: wake the lease loop then."""
        if len(self._due) < MAX_TRACKED_DUE:
            heapq.heappush(self._due, due)
        if self._idle_until is not None and due < self._idle_until:
            self._nudge.set()

    def reserve(self, settling: int) -> int:
        """Claim every free slot for one lease call, counting the ``settling`` jobs' slots as free
        (a lease riding on their commit, see :class:`~conveyor.runtime.committer.Refill`)."""
        if self._stop.is_set():
            return 0
        free = max(0, self.config.concurrency - len(self._inflight) - self._reserved + settling)
        self._reserved += free
        return free

    def _start(self, jobs: Sequence[LeasedJob], reserved: int) -> None:
        """Run the ``jobs`` one lease call brought, giving back the slots it had claimed."""
        self._reserved -= reserved
        if jobs and self._stop.is_set():
            # leased by a commit that was on its way when the worker began to stop: given back
            # unrun, no attempt spent (queued now, so the closing committer still sends them)
            logger.info("releasing %d jobs leased while stopping", len(jobs))
            for leased in jobs:
                self._committer.queue(self._release(leased)).add_done_callback(_retrieved)
            return
        if self._metrics is not None:
            self._metrics.started(jobs)
        for leased in jobs:
            task = asyncio.create_task(self._work(leased), name=f"conveyor job {leased.id} of {leased.queue}")
            self._inflight.add(task)
            task.add_done_callback(self._finished)

    def leased(self, jobs: list[LeasedJob], reserved: int) -> None:
        """:class:`Refill`: start the jobs a commit brought back."""
        if jobs:
            self.lease_rounds += 1
        self._start(jobs, reserved)

    @staticmethod
    async def _first(*waits: Awaitable[Any]) -> None:
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._running.pop(task, None)
        self._slot_free.set()
        if task.cancelled():
            if not self._releasing:
                logger.warning(
                    "%s was cancelled from inside its handler; it runs again when its lease expires",
                    task.get_name(),
                )
        elif task.exception() is not None:
            logger.error("internal error while settling %s", task.get_name(), exc_info=task.exception())

    async def _drain(self) -> None:
        if self._inflight and not self._hurry.is_set():
            logger.info(
                "waiting up to %gs for %d running jobs",
                self.config.shutdown_grace,
                len(self._inflight),
            )
            await self._first(
                asyncio.wait(set(self._inflight), timeout=self.config.shutdown_grace), self._hurry.wait()
            )
        self._releasing = True
        for task in self._running:
            task.cancel()
        if self._running:  # a handler that honours cancellation ends at once and its job releases itself
            await asyncio.wait(set(self._running), timeout=CANCEL_GRACE)
        stuck = [running.leased for running in self._running.values()]
        for task in self._running:  # no longer waited for: its late result is discarded (see _work)
            self._inflight.discard(task)
        self._running.clear()
        releases = {asyncio.ensure_future(self._committer.submit(self._release(leased))) for leased in stuck}
        abandoned = self._attempts.abandoned
        for handler in abandoned:  # those abandoned at their timeout: cancelled once more
            handler.cancel()
        if abandoned:  # (and those of timed jobs just released, given the same grace)
            await asyncio.wait(set(abandoned), timeout=CANCEL_GRACE)
        if stuck or abandoned:
            logger.warning(
                "%d handlers ignore cancellation; their jobs are released and the worker stops without them",
                len(stuck) + len(abandoned),
            )
        if self._inflight or releases:
            await self._first(asyncio.wait(set(self._inflight) | releases), self._hurry.wait())

    @staticmethod
    def _release(leased: LeasedJob) -> Commit:
        return Commit(Settlement(leased.id, leased.token, Outcome.RELEASE))

    # one job

    async def _work(self, leased: LeasedJob) -> None:
        task = asyncio.current_task()
        assert task is not None
        running = self.watch.start(task, leased)
        try:
            commit, describe = await self._attempts.run(leased, running)
        except asyncio.CancelledError:
            if running.lease_lost:  # cancelled by the watch: nothing to commit (it would be STALE)
                self._running.pop(task, None)
                return
            if not self._releasing:
                raise
            commit, describe = self._release(leased), "released at shutdown"
        if self._running.pop(task, None) is None or running.lease_lost:
            # released at shutdown while its handler ignored cancellation, or its lease lost while
            # it did: a late result is discarded
            return
        try:
            result = await self._committer.submit(commit)
        except CommitRejectedError as rejected:
            dead = await self._dead_letter_rejected(leased, commit, rejected)
            if dead is None:
                return
            (commit, result), describe = dead, "dead-lettered: its commit could not be stored"
        except Exception as exc:
            logger.error(
                "could not commit job %s of %r (%s); it runs again when its lease expires",
                leased.id,
                leased.queue,
                exc,
            )
            return
        if result.status is not CommitStatus.CONFLICT:  # (a conflict commits once more below)
            # Settled: free the slot now, not when this task's done-callback runs a few loop turns
            # later, or the next commit, which the jobs its lease brought make at once, would find
            # every slot taken and go without a lease of its own.
            self._inflight.discard(task)
            self._slot_free.set()
        settlement = commit.settlement
        if settlement is None or settlement.outcome is not Outcome.RELEASE:
            self.processed += 1
        if self._metrics is not None:
            self._metrics.committed(leased.queue, commit, result.status)
        if result.status is CommitStatus.STALE:
            logger.warning(
                "job %s of %r lost its lease before committing; its effects were discarded "
                "(raise visibility_timeout or use ctx.extend_lease / heartbeat=True)",
                leased.id,
                leased.queue,
            )
        elif result.status is CommitStatus.CONFLICT:
            await self._retry_after_conflict(leased)
        else:
            retry_at = (
                settlement.available_at
                if settlement is not None and settlement.outcome is Outcome.RETRY
                else None
            )
            if retry_at is not None:
                self._expect(retry_at)
            for job in commit.effects.jobs:  # delayed jobs this worker serves: start them on time too
                if job.queue in self.lease_map and job.available_at > job.enqueued_at:
                    self._expect(job.available_at)
            if describe:
                logger.debug("job %s of %r: %s", leased.id, leased.queue, describe)

    async def _dead_letter_rejected(
        self, leased: LeasedJob, commit: Commit, rejected: CommitRejectedError
    ) -> tuple[Commit, CommitResult] | None:
        """Dead-letter ``leased`` on this attempt, without the effects that could not be stored
        (see :meth:`DeadLetters.after_refusal`). None (logged) if that could not be committed."""
        failure: Exception = rejected
        for candidate in await self._dead_letters.after_refusal(leased, commit, rejected):
            try:
                return candidate, await self._committer.submit(candidate)
            except CommitRejectedError as again:
                failure = again
            except Exception as exc:
                failure = exc
                break
        logger.error(
            "job %s of %r: could not dead-letter it after its commit was refused (%s); "
            "it runs again when its lease expires",
            leased.id,
            leased.queue,
            describe_error(failure),
        )
        return None

    async def _retry_after_conflict(self, leased: LeasedJob) -> None:
        # retried even after its last attempt: the next lease dead-letters it, as one past max_attempts
        lifecycle = self.queues[leased.queue].lifecycle
        error = error_info(RuntimeError("a compare_and_set lost a race with another writer"))
        at = outcome.retry_at(None, lifecycle, leased.attempt, self.runtime.clock.now())
        result = await self._committer.submit(
            Commit(Settlement(leased.id, leased.token, Outcome.RETRY, at, error))
        )
        if result.status is CommitStatus.OK:
            logger.warning("job %s of %r: state conflict, retrying", leased.id, leased.queue)
