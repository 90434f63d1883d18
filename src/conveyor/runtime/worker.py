"""The worker: leases jobs in batches, runs their handlers, commits outcomes with their effects."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import traceback
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from conveyor.definitions.service import QueueWorker
from conveyor.model.envelope import Envelope
from conveyor.model.errors import (
    BackendError,
    CommitRejectedError,
    HandlerTimeoutError,
    PayloadValidationError,
    PermanentError,
    Retry,
    UndecodableMessageError,
)
from conveyor.model.history import HistoryKind
from conveyor.model.text import cut, storable_text
from conveyor.observability.metrics import QUEUE
from conveyor.observability.tracing import record_failure
from conveyor.ports import (
    Commit,
    CommitResult,
    CommitStatus,
    Effects,
    ErrorInfo,
    HistoryEntry,
    LeasedJob,
    Outcome,
    Settlement,
)
from conveyor.runtime import saga
from conveyor.runtime.committer import Committer
from conveyor.runtime.context import Context
from conveyor.runtime.runtime import Runtime

logger = logging.getLogger("conveyor.worker")

MAX_TRACEBACK_CHARS = 16_000
MAX_MESSAGE_CHARS = 4_000
"""An error's message and traceback are cut to these lengths (the cut is marked) before they are
stored with a retry or a dead letter: a handler that raises a 5 MB message must not write it
into every retry and the dead-letter queue."""

CANCEL_GRACE = 0.5
"""How long a cancelled handler (past its timeout, or at shutdown once the grace period is over)
may take to end, running its ``finally`` blocks, before it is abandoned: the attempt is settled
without it and whatever it does afterwards is discarded."""
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
    """

    concurrency: int = 50
    poll_interval: float = 0.5
    shutdown_grace: float = 30.0
    commit_batch: int = 500


def error_info(error: BaseException) -> ErrorInfo:
    """What is stored of ``error``: its type's name, its message and traceback, each cut to length
    and made storable text on every backend (see :func:`storable_text`).

    Never raises, even for an exception whose ``__str__`` does.
    """
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ in ("builtins", "__main__")
        else (f"{kind.__module__}.{kind.__qualname__}")
    )
    try:
        text = "".join(traceback.format_exception(error))
    except Exception as exc:
        text = f"<traceback could not be formatted: {type(exc).__name__}>"
    if len(text) > MAX_TRACEBACK_CHARS:  # keep the outermost frames and the last line's end
        half = MAX_TRACEBACK_CHARS // 2
        text = f"{text[:half]}\n… [{len(text) - 2 * half:,} characters cut] …\n{text[-half:]}"
    return ErrorInfo(storable_text(name), _message(error), storable_text(text))


def _message(error: BaseException) -> str:
    """``error``'s message as :func:`error_info` stores it: cut to length, storable, never raising."""
    kind = type(error)
    try:
        message = str(error) or kind.__name__
    except Exception as exc:  # a broken __str__ must not cost the job its dead letter
        message = f"<{kind.__name__} whose str() raised {type(exc).__name__}>"
    return storable_text(cut(message, MAX_MESSAGE_CHARS))


def describe_error(error: BaseException) -> str:
    """``Type: message`` for a history entry or a log line, as cut and escaped as :func:`error_info`
    (without formatting the traceback, which a retry's history entry and log line do not show)."""
    return f"{type(error).__name__}: {_message(error)}"


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A release nobody waits for: its failure is logged, and the job runs after its lease."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not release a job leased while stopping: %s", future.exception())


class _Raised(Exception):
    """A handler's ``BaseException`` carried out of its task as an ordinary exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


async def _contained(call: Awaitable[Any]) -> Any:
    """Await ``call`` in a task of its own: a task that raises ``SystemExit`` or
    ``KeyboardInterrupt`` re-raises it into the event loop, which would end the worker process,
    so it leaves the task wrapped and is raised again by the attempt (and dead-lettered there)."""
    try:
        return await call
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        raise _Raised(exc) from None


class Worker:
    """Works the given queues until :meth:`stop`; SIGTERM handling belongs to the caller."""

    def __init__(self, runtime: Runtime, queues: Sequence[QueueWorker[Any]], config: WorkerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.queues = {definition.name: definition for definition in queues}
        self.lease_map = {name: d.lifecycle.lease_seconds for name, d in self.queues.items()}
        self._loggers = {name: logging.getLogger(f"conveyor.handler.{name}") for name in self.queues}
        self._committer = Committer(
            runtime.backend, runtime.clock, max_batch=config.commit_batch, refill=self
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._reserved = 0
        """slots claimed by a lease call on its way (the lease loop's or one riding on a commit)"""
        self._running: dict[asyncio.Task[None], LeasedJob] = {}
        """jobs whose handler (or dead-letter hook) runs: what shutdown cancels, then releases"""
        self._abandoned: set[asyncio.Future[Any]] = set()
        """handlers that ignored cancellation and still run; their attempts are settled without them"""
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
        self.lease_extensions = 0
        self.lease_rounds = 0
        """lease calls made: tests wait on it to know the worker has looked for jobs"""

    def stop(self, *, now: bool = False) -> None:
        """Stop leasing; running jobs get ``shutdown_grace`` to finish, then are released.

        ``now`` (what a second SIGTERM asks for) ends the grace period at once, even during it.
        """
        self._stop.set()
        if now:
            self._hurry.set()

    @property
    def abandoned(self) -> int:
        """Handlers that ignored cancellation and are still running, their attempts settled."""
        return len(self._abandoned)

    async def run(self) -> None:
        if not self.queues:
            await self._stop.wait()
            return
        committer = asyncio.create_task(self._committer.run(), name="conveyor-committer")
        names = sorted(self.queues)
        logger.info("worker started: queues %s, concurrency %d", ", ".join(names), self.config.concurrency)
        try:
            await self._lease_loop(names)
        finally:
            await self._drain()
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
                jobs = await backend.lease(self.lease_map, free, leased_at)
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
        if self.runtime.metrics.enabled:
            for leased in jobs:
                self.runtime.metrics.started.add(1, {QUEUE: leased.queue})
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
        stuck = list(self._running.values())
        for task in self._running:  # no longer waited for: its late result is discarded (see _work)
            self._inflight.discard(task)
        self._running.clear()
        releases = {asyncio.ensure_future(self._committer.submit(self._release(leased))) for leased in stuck}
        for handler in self._abandoned:  # those abandoned at their timeout: cancelled once more
            handler.cancel()
        if self._abandoned:  # (and those of timed jobs just released, given the same grace)
            await asyncio.wait(set(self._abandoned), timeout=CANCEL_GRACE)
        if stuck or self._abandoned:
            logger.warning(
                "%d handlers ignore cancellation; their jobs are released and the worker stops without them",
                len(stuck) + len(self._abandoned),
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
        self._running[task] = leased
        try:
            commit, describe = await self._run(leased)
        except asyncio.CancelledError:
            if not self._releasing:
                raise
            commit, describe = self._release(leased), "released at shutdown"
        if self._running.pop(task, None) is None:
            return  # released at shutdown while its handler ignored cancellation: a late result is discarded
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
        if self.runtime.metrics.enabled:
            self._count(leased.queue, commit, result.status)
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
        """Dead-letter ``leased`` on this attempt, without the effects that could not be stored:
        with ``rejected`` as its error, through ``on_dead_letter`` and with its history entry (a
        refused dead letter keeps its own error, noting the refusal, and gets its history entry
        only); should that be refused too, bare. None (logged) if neither could be committed."""
        started = self.runtime.clock.now()
        settlement = commit.settlement
        info = error_info(rejected)
        refused_dead = settlement is not None and settlement.outcome is Outcome.DEAD
        if refused_dead and settlement is not None and settlement.error is not None:
            own = settlement.error
            note = f"dead-lettered without its effects, which could not be stored: {info.message}"
            info = ErrorInfo(own.type, f"{own.message} ({note})", own.traceback)
        bare = Commit(Settlement(leased.id, leased.token, Outcome.DEAD, None, info))
        try:
            envelope = Envelope.decode(leased.body)
        except Exception:  # as in _run: whatever decode raises, this job has no envelope
            dead = bare
        else:
            envelope.attempt = leased.attempt
            if refused_dead:  # on_dead_letter ran already: its effects may be what was refused
                logger.error(
                    "job %s of %r: its dead letter could not be stored with its effects; "
                    "dead-lettered without them: %s",
                    leased.id,
                    leased.queue,
                    describe_error(rejected),
                )
                history = self._history(envelope, leased, HistoryKind.DEAD_LETTERED, started, rejected)
                dead = Commit(bare.settlement, Effects(history=history))
            else:
                definition = self.queues[leased.queue]
                try:
                    dead = await self._dead_with_hook(leased, definition, envelope, None, rejected, started)
                except Exception as exc:  # e.g. a saga's history read refused the same text
                    logger.error("job %s of %r: dead-lettering it bare: %s", leased.id, leased.queue, exc)
                    dead = bare
        failure: Exception = rejected
        for candidate in [bare] if dead is bare else [dead, bare]:
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

    def _record_duration(self, queue: str, started: float) -> None:
        metrics = self.runtime.metrics
        if metrics.enabled:
            metrics.duration.record(max(0.0, self.runtime.clock.now() - started), {QUEUE: queue})

    def _count(self, queue: str, commit: Commit, status: CommitStatus) -> None:
        metrics = self.runtime.metrics
        attributes = {QUEUE: queue}
        settlement = commit.settlement
        if status is CommitStatus.STALE:
            metrics.lease_lost.add(1, attributes)
        elif status is CommitStatus.OK and settlement is not None:
            counter = {
                Outcome.ACK: metrics.succeeded,
                Outcome.RETRY: metrics.failed,
                Outcome.DEAD: metrics.dead_lettered,
            }.get(settlement.outcome)
            if counter is not None:
                counter.add(1, attributes)
            for job in commit.effects.jobs:
                metrics.enqueued.add(1, {QUEUE: job.queue})

    async def _retry_after_conflict(self, leased: LeasedJob) -> None:
        definition = self.queues[leased.queue]
        error = error_info(RuntimeError("a compare_and_set lost a race with another writer"))
        settlement = self._failure_settlement(leased, definition, None, error, permanent=False)
        result = await self._committer.submit(Commit(settlement))
        if result.status is CommitStatus.OK:
            logger.warning("job %s of %r: state conflict, retrying", leased.id, leased.queue)

    async def _run(self, leased: LeasedJob) -> tuple[Commit, str]:
        runtime = self.runtime
        definition = self.queues[leased.queue]
        started = runtime.clock.now()
        try:
            envelope = Envelope.decode(leased.body)
        except Exception as exc:
            if not isinstance(exc, UndecodableMessageError):  # a gap in decode's checks: same fate
                exc = UndecodableMessageError(f"message could not be decoded: {describe_error(exc)}")
            logger.error("job %s of %r is undecodable, dead-lettered: %s", leased.id, leased.queue, exc)
            return await self._dead(leased, None, exc, Effects(), started), "undecodable"
        envelope.attempt = leased.attempt
        lifecycle = definition.lifecycle
        if leased.attempt > lifecycle.max_attempts:
            error = RuntimeError(
                f"attempt {leased.attempt} exceeds max_attempts={lifecycle.max_attempts}: "
                "earlier attempts' workers died or lost their lease"
            )
            return await self._dead_with_hook(leased, definition, envelope, None, error, started), "dead"
        try:
            payload = self._admit(definition, envelope, leased)
        except Exception as refused:
            return await self._refuse(leased, envelope, refused, started), "refused"
        fields: dict[str, object] = {
            "service": definition.service.name,
            "queue": definition.name,
            "job_id": leased.id,
            "attempt": leased.attempt,
            "correlation_id": envelope.correlation_id,
        }
        with runtime.tracer.consume(envelope, definition.name, leased.id, leased.attempt) as span:
            try:
                if span is not None:
                    fields["trace_id"] = format(span.get_span_context().trace_id, "032x")
                context = Context(
                    runtime,
                    service=definition.service.name,
                    service_version=definition.service.version,
                    emits=definition.emits,
                    envelope=envelope,
                    leased=leased,
                    max_attempts=lifecycle.max_attempts,
                    logger=self._loggers[definition.name],
                    log_fields=fields,
                    span=span,
                )
            except Exception as broken:  # a bug, but one the job would meet on every lease
                return await self._refuse(leased, envelope, broken, started), "refused"
            try:
                await self._call(definition, context, payload, leased)
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                record_failure(span, error)
                self._record_duration(definition.name, started)
                permanent = isinstance(error, PermanentError)
                if permanent or leased.attempt >= lifecycle.max_attempts:
                    return await self._dead_with_hook(
                        leased, definition, envelope, payload, error, started
                    ), "dead"
                settlement = self._failure_settlement(
                    leased, definition, error, error_info(error), permanent=False
                )
                context.logger.warning(
                    "attempt %d/%d failed, retrying at +%.2fs: %s",
                    leased.attempt,
                    lifecycle.max_attempts,
                    (settlement.available_at or started) - runtime.clock.now(),
                    describe_error(error),
                )
                return Commit(
                    settlement,
                    Effects(history=self._history(envelope, leased, HistoryKind.RETRIED, started, error)),
                ), "retried"
        self._record_duration(definition.name, started)
        effects = context.buffer.effects
        if runtime.history_enabled:
            try:
                step = saga.completed_step(definition, envelope)
                extra = {saga.SAGA_STEP: step} if step else None
                # the step's own entry first, so a timeline reads "step, then what it emitted"
                effects.history[:0] = self._history(
                    envelope, leased, HistoryKind.SUCCEEDED, started, None, extra
                )
                saga.advance(runtime, envelope, effects)
            except (
                Exception
            ) as error:  # a step or a chain that cannot be stored: the next attempt could not either
                return await self._dead_with_hook(
                    leased, definition, envelope, payload, error, started
                ), "dead"
        return Commit(Settlement(leased.id, leased.token, Outcome.ACK), effects), ""

    def _admit(self, definition: QueueWorker[Any], envelope: Envelope, leased: LeasedJob) -> Any:
        """What the handler gets as its payload; raises what dead-letters the job before its attempt
        (an event its subscription does not consume, a payload its model refuses)."""
        if (
            definition.kind == "subscription"
            and envelope.kind == "event"
            and envelope.name != definition.event
        ):
            raise PermanentError(
                f"subscription {definition.name!r} consumes {definition.event!r}, got event {envelope.name!r}"
            )
        model = definition.payload
        if model is None or not definition.accepts_payload:
            return envelope.payload
        try:
            return model.model_validate(envelope.payload)
        except ValidationError as exc:
            raise PayloadValidationError(
                f"payload of job {leased.id} does not match {model.__name__}: {exc}"
            ) from None
        except Exception as exc:  # a validator's own error, which pydantic lets through
            raise PayloadValidationError(
                f"payload of job {leased.id} does not match {model.__name__}: "
                f"its validation raised {describe_error(exc)}"
            ) from exc

    async def _refuse(
        self, leased: LeasedJob, envelope: Envelope, error: BaseException, started: float
    ) -> Commit:
        """Dead-letter a job before its attempt, without ``on_dead_letter`` (which would get the
        payload that was refused): whatever made it fail here would fail every lease alike."""
        logger.error(
            "job %s of %r dead-lettered before its attempt: %s",
            leased.id,
            leased.queue,
            describe_error(error),
        )
        return await self._dead(leased, envelope, error, Effects(), started)

    async def _call(
        self, definition: QueueWorker[Any], context: Context, payload: Any, leased: LeasedJob
    ) -> None:
        lifecycle = definition.lifecycle
        call = (
            definition.handler(context)
            if definition.kind == "schedule"
            else definition.handler(context, payload)
        )
        heartbeat = None
        if lifecycle.heartbeat:
            heartbeat = asyncio.create_task(self._heartbeat(leased, lifecycle.lease_seconds))
        try:
            timeout = lifecycle.timeout_seconds
            if timeout is None:
                # inline: no task of its own on the hot path; shutdown still gets past a handler
                # that ignores cancellation (see _drain)
                await call
            else:
                await self._call_with_timeout(call, timeout, context, leased)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _call_with_timeout(
        self, call: Awaitable[Any], timeout: float, context: Context, leased: LeasedJob
    ) -> None:
        """Run the handler in a task of its own, so that its attempt ends at ``timeout`` even if
        it ignores cancellation (a bare ``except:`` around an ``await``): the task can be abandoned."""
        handler = asyncio.ensure_future(_contained(call))
        try:
            done, _ = await asyncio.wait((handler,), timeout=timeout)
        except asyncio.CancelledError:  # shutdown: the job is released at once, without the handler
            if not handler.done():
                context.buffer.close(f"job {leased.id} of queue {leased.queue!r} was released at shutdown")
                handler.cancel()
                self._keep(handler)
            raise
        if done:
            try:
                handler.result()  # its return, or what it raised (its own TimeoutError stays one)
            except _Raised as raised:
                raise raised.error from None
            return
        context.buffer.close(
            f"job {leased.id} of queue {leased.queue!r} timed out after {timeout:g}s; "
            "nothing this attempt does from now on commits"
        )
        handler.cancel()
        try:
            await asyncio.wait((handler,), timeout=CANCEL_GRACE)
        finally:
            if handler.done():
                self._abandoned_ended(handler)  # what it raised on its way out is no news
            else:
                self._keep(handler)
                logger.warning(
                    "the handler of job %s of %r ignored cancellation at its timeout and is still "
                    "running; the attempt failed without it and what it does from now on is "
                    "discarded (%d such handlers running)",
                    leased.id,
                    leased.queue,
                    len(self._abandoned),
                )
        raise HandlerTimeoutError(f"attempt ran longer than its timeout of {timeout:g}s")

    def _keep(self, handler: asyncio.Future[Any]) -> None:
        """Hold an abandoned handler until it ends (a task nothing references may vanish mid-run)."""
        self._abandoned.add(handler)
        handler.add_done_callback(self._abandoned_ended)

    def _abandoned_ended(self, handler: asyncio.Future[Any]) -> None:
        self._abandoned.discard(handler)
        if not handler.cancelled():
            handler.exception()  # retrieved: its late failure is no news (its attempt was settled)

    async def _heartbeat(self, leased: LeasedJob, lease_seconds: float) -> None:
        runtime = self.runtime
        while True:
            await runtime.clock.sleep(lease_seconds / 3)
            now = runtime.clock.now()
            try:
                ok = await runtime.backend.extend(leased.id, leased.token, now + lease_seconds, now)
            except BackendError as exc:
                logger.warning("heartbeat of job %s failed: %s", leased.id, exc)
                continue
            if not ok:
                logger.warning(
                    "job %s of %r lost its lease; its result will be discarded",
                    leased.id,
                    leased.queue,
                )
                return
            self.lease_extensions += 1

    def _failure_settlement(
        self,
        leased: LeasedJob,
        definition: QueueWorker[Any],
        error: BaseException | None,
        info: ErrorInfo,
        *,
        permanent: bool,
    ) -> Settlement:
        now = self.runtime.clock.now()
        if isinstance(error, Retry) and error.delay is not None:
            delay = max(0.0, error.delay)
        else:
            delay = definition.lifecycle.retry.delay(leased.attempt)
        return Settlement(leased.id, leased.token, Outcome.RETRY, now + delay, info)

    def _history(
        self,
        envelope: Envelope,
        leased: LeasedJob,
        kind: HistoryKind,
        started: float,
        error: BaseException | None,
        extra: dict[str, Any] | None = None,
    ) -> list[HistoryEntry]:
        """The attempt's history entry (none when history is off)."""
        runtime = self.runtime
        if runtime.history_enabled:
            now = runtime.clock.now()
            detail: dict[str, Any] = {"started_at": started, "duration": now - started}
            if extra:
                detail.update(extra)
            if error is not None:
                detail["error"] = describe_error(error)
            return [
                HistoryEntry(
                    envelope.correlation_id,
                    now,
                    kind,
                    leased.queue,
                    leased.id,
                    leased.attempt,
                    orjson.dumps(detail).decode(),
                )
            ]
        return []

    async def _dead(
        self,
        leased: LeasedJob,
        envelope: Envelope | None,
        error: BaseException,
        effects: Effects,
        started: float,
    ) -> Commit:
        info = error_info(error)
        if envelope is not None:
            effects.history[:0] = self._history(envelope, leased, HistoryKind.DEAD_LETTERED, started, error)
            if self.runtime.history_enabled:
                await saga.start(self.runtime, envelope, effects)
        return Commit(Settlement(leased.id, leased.token, Outcome.DEAD, None, info), effects)

    async def _dead_with_hook(
        self,
        leased: LeasedJob,
        definition: QueueWorker[Any],
        envelope: Envelope,
        payload: Any,
        error: BaseException,
        started: float,
    ) -> Commit:
        """Dead-letter the job; ``on_dead_letter``'s effects commit with the move."""
        hook = definition.dead_letter_handler
        effects = Effects()
        info = error_info(error)
        # the stored, capped traceback rather than exc_info: a 5 MB message must not reach the log whole
        expected = isinstance(error, PermanentError | HandlerTimeoutError)
        logger.error(
            "job %s of %r dead-lettered after attempt %d: %s: %s%s",
            leased.id,
            leased.queue,
            leased.attempt,
            type(error).__name__,
            info.message,
            "" if expected or not info.traceback else "\n" + info.traceback.rstrip(),
        )
        if hook is not None:
            if payload is None and definition.payload is not None:
                with contextlib.suppress(Exception):  # invalid, or a validator that raised: None
                    payload = definition.payload.model_validate(envelope.payload)
            context = Context(
                self.runtime,
                service=definition.service.name,
                service_version=definition.service.version,
                emits=definition.dead_letter_emits,
                envelope=envelope,
                leased=leased,
                max_attempts=definition.lifecycle.max_attempts,
            )
            try:
                await hook(context, payload, error)
            except asyncio.CancelledError:
                raise
            except BaseException as hook_error:
                logger.error(
                    "on_dead_letter of %r failed for job %s; dead-lettered without its effects",
                    definition.name,
                    leased.id,
                    exc_info=hook_error,
                )
                error = RuntimeError(
                    f"{describe_error(error)} (then on_dead_letter failed: {describe_error(hook_error)})"
                )
            else:
                effects = context.buffer.effects
                if self.runtime.history_enabled:
                    effects.history.append(
                        HistoryEntry(
                            envelope.correlation_id,
                            self.runtime.clock.now(),
                            HistoryKind.COMPENSATED,
                            definition.name,
                            leased.id,
                            leased.attempt,
                        )
                    )
        return await self._dead(leased, envelope, error, effects, started)
