"""One attempt of a leased job: decode it, admit its payload, call its handler (under its timeout,
its lease extended by a heartbeat), and say how to settle it, with the effects that commit then."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from pydantic import ValidationError

from conveyor.definitions.service import QueueWorker
from conveyor.model.envelope import Envelope
from conveyor.model.errors import (
    BackendError,
    HandlerTimeoutError,
    JobCancelledError,
    PayloadValidationError,
    PermanentError,
    UndecodableMessageError,
)
from conveyor.model.history import HistoryKind
from conveyor.model.lifecycle import JobOptions, Lifecycle
from conveyor.observability.tracing import record_failure
from conveyor.ports import Commit, Effects, LeasedJob, Outcome, Settlement
from conveyor.runtime.context import Context
from conveyor.runtime.dead_letter import DeadLetters
from conveyor.runtime.error_text import describe_error, error_info
from conveyor.runtime.observers import JobHistory, JobMetrics
from conveyor.runtime.outcome import decide
from conveyor.runtime.runtime import Runtime
from conveyor.runtime.scheduler import schedule_tick
from conveyor.runtime.watch import Running, Watch

logger = logging.getLogger("conveyor.worker")

CANCEL_GRACE = 0.5
"""How long a cancelled handler (past its timeout, or at shutdown once the grace period is over)
may take to end, running its ``finally`` blocks, before it is abandoned: the attempt is settled
without it and whatever it does afterwards is discarded."""


def job_lifecycle(lifecycle: Lifecycle, envelope: Envelope | None) -> Lifecycle:
    """The queue's ``lifecycle`` with the job's own ``max_attempts`` and ``visibility_timeout``
    (``enqueue(max_attempts=..., visibility_timeout=...)``) in place of the queue's."""
    if envelope is None or (envelope.max_attempts is None and envelope.visibility_timeout is None):
        return lifecycle
    return JobOptions(0, envelope.max_attempts, envelope.visibility_timeout).applied_to(lifecycle)


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


class Attempts:
    """Runs the attempts of one worker's jobs: :meth:`run` works one and returns its commit.

    Nothing a job's body or handler does escapes :meth:`run` but cancellation: whatever cannot be
    attempted is dead-lettered on its first lease, since it would fail every lease alike.
    """

    def __init__(
        self,
        runtime: Runtime,
        queues: Mapping[str, QueueWorker[Any]],
        history: JobHistory | None,
        metrics: JobMetrics | None,
        dead_letters: DeadLetters,
        watch: Watch | None = None,
    ) -> None:
        self.runtime = runtime
        self.watch = watch
        self.queues = queues
        self.history = history
        self.metrics = metrics
        self.dead_letters = dead_letters
        self._loggers = {name: logging.getLogger(f"conveyor.handler.{name}") for name in queues}
        self.abandoned: set[asyncio.Future[Any]] = set()
        """handlers that ignored cancellation and still run; their attempts are settled without them"""
        self.lease_extensions = 0

    async def run(self, leased: LeasedJob, running: Running | None = None) -> tuple[Commit, str]:
        """The commit that settles this attempt of ``leased``, and a word on it for the log;
        ``running`` is the worker's watch record of it (cancellation requests, lease deadline)."""
        runtime = self.runtime
        definition = self.queues[leased.queue]
        started = runtime.clock.now()
        try:
            envelope = Envelope.decode(leased.body)
        except Exception as exc:
            if not isinstance(exc, UndecodableMessageError):  # a gap in decode's checks: same fate
                exc = UndecodableMessageError(f"message could not be decoded: {describe_error(exc)}")
            logger.error("job %s of %r is undecodable, dead-lettered: %s", leased.id, leased.queue, exc)
            return await self.dead_letters.dead(leased, None, exc, Effects(), started), "undecodable"
        envelope.attempt = leased.attempt
        lifecycle = job_lifecycle(definition.lifecycle, envelope)
        if leased.attempt > lifecycle.max_attempts:
            error = RuntimeError(
                f"attempt {leased.attempt} exceeds max_attempts={lifecycle.max_attempts}: "
                "earlier attempts' workers died or lost their lease"
            )
            return await self.dead_letters.with_hook(
                leased, definition, envelope, None, error, started
            ), "dead"
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
                    enqueues=definition.enqueues,
                    envelope=envelope,
                    leased=leased,
                    max_attempts=lifecycle.max_attempts,
                    logger=self._loggers[definition.name],
                    log_fields=fields,
                    span=span,
                    running=running,
                )
            except Exception as broken:  # a bug, but one the job would meet on every lease
                return await self._refuse(leased, envelope, broken, started), "refused"
            try:
                await self._call(definition, context, payload, leased, running)
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                ended = runtime.clock.now()
                if self.metrics is not None:
                    self.metrics.ended(definition.name, started, ended)
                if isinstance(error, JobCancelledError):
                    return self._cancelled(context, envelope, leased, started, running, error), "cancelled"
                record_failure(span, error)
                decision = decide(error, lifecycle, leased.attempt, ended)
                if decision.outcome is Outcome.DEAD:
                    return await self.dead_letters.with_hook(
                        leased, definition, envelope, payload, error, started
                    ), "dead"
                retry_at = decision.retry_at
                context.logger.warning(
                    "attempt %d/%d failed, retrying at +%.2fs: %s",
                    leased.attempt,
                    lifecycle.max_attempts,
                    (retry_at or ended) - ended,
                    describe_error(error),
                )
                effects = Effects()
                if self.history is not None:
                    self.history.retried(envelope, leased, started, error, effects)
                settlement = Settlement(leased.id, leased.token, Outcome.RETRY, retry_at, error_info(error))
                return Commit(settlement, effects), "retried"
        if self.metrics is not None:
            self.metrics.ended(definition.name, started, runtime.clock.now())
        effects = context.buffer.effects
        if self.history is not None:
            try:
                self.history.succeeded(definition, envelope, leased, started, effects)
            # a step or a chain that cannot be stored: the next attempt could not store it either
            except Exception as error:
                return await self.dead_letters.with_hook(
                    leased, definition, envelope, payload, error, started
                ), "dead"
        return Commit(Settlement(leased.id, leased.token, Outcome.ACK), effects), ""

    def _cancelled(
        self,
        context: Context,
        envelope: Envelope,
        leased: LeasedJob,
        started: float,
        running: Running | None,
        error: JobCancelledError,
    ) -> Commit:
        """The handler raised :class:`JobCancelledError`: the job is done for good (ACK: no retry,
        no dead letter, no ``on_dead_letter``) and what it buffered is discarded; its history says
        cancelled, ``requested`` telling whether an operator asked for it."""
        requested = running is not None and running.cancel_requested
        context.logger.info("cancelled%s: %s", " as requested" if requested else "", error)
        effects = Effects()
        if self.history is not None:
            extra = {"requested": requested}
            entry = self.history.entry(envelope, leased, HistoryKind.CANCELLED, started, None, extra)
            effects.history.append(entry)
        return Commit(Settlement(leased.id, leased.token, Outcome.ACK), effects)

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
        return await self.dead_letters.dead(leased, envelope, error, Effects(), started)

    async def _call(
        self,
        definition: QueueWorker[Any],
        context: Context,
        payload: Any,
        leased: LeasedJob,
        running: Running | None,
    ) -> None:
        lifecycle = job_lifecycle(definition.lifecycle, context.message)
        if definition.kind != "schedule":
            call = definition.handler(context, payload)
        elif definition.takes_tick:
            call = definition.handler(context, schedule_tick(definition.name, context.message))
        else:
            call = definition.handler(context)
        heartbeat = None
        if lifecycle.heartbeat:
            heartbeat = asyncio.create_task(self._heartbeat(leased, lifecycle.lease_seconds, running))
        try:
            timeout = lifecycle.timeout_seconds
            if timeout is None:
                # inline: no task of its own on the hot path; shutdown still gets past a handler
                # that ignores cancellation (see Worker._drain)
                await call
            else:
                await self._call_with_timeout(call, timeout, context, leased, running)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _call_with_timeout(
        self,
        call: Awaitable[Any],
        timeout: float,
        context: Context,
        leased: LeasedJob,
        running: Running | None,
    ) -> None:
        """Run the handler in a task of its own, so that its attempt ends at ``timeout`` even if
        it ignores cancellation (a bare ``except:`` around an ``await``): the task can be abandoned."""
        handler = asyncio.ensure_future(_contained(call))
        try:
            done, _ = await asyncio.wait((handler,), timeout=timeout)
        except asyncio.CancelledError:  # shutdown (the job is released at once) or a lost lease
            if not handler.done():
                lost = running is not None and running.lease_lost
                why = "lost its lease" if lost else "was released at shutdown"
                context.buffer.close(f"job {leased.id} of queue {leased.queue!r} {why}")
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
                    len(self.abandoned),
                )
        raise HandlerTimeoutError(f"attempt ran longer than its timeout of {timeout:g}s")

    def _keep(self, handler: asyncio.Future[Any]) -> None:
        """Hold an abandoned handler until it ends (a task nothing references may vanish mid-run)."""
        self.abandoned.add(handler)
        handler.add_done_callback(self._abandoned_ended)

    def _abandoned_ended(self, handler: asyncio.Future[Any]) -> None:
        self.abandoned.discard(handler)
        if not handler.cancelled():
            handler.exception()  # retrieved: its late failure is no news (its attempt was settled)

    async def _heartbeat(self, leased: LeasedJob, lease_seconds: float, running: Running | None) -> None:
        runtime = self.runtime
        while True:
            await runtime.clock.sleep(lease_seconds / 3)
            now = runtime.clock.now()
            until = now + lease_seconds
            try:
                ok = await runtime.backend.extend(leased.id, leased.token, until, now)
            except BackendError as exc:  # the watch cancels the handler if its deadline passes
                logger.warning("heartbeat of job %s failed: %s", leased.id, exc)
                continue
            if not ok:
                if running is not None and self.watch is not None:
                    self.watch.lose(running, "its heartbeat found the lease taken")
                else:
                    logger.warning(
                        "job %s of %r lost its lease; its result will be discarded", leased.id, leased.queue
                    )
                return
            if running is not None and until > running.deadline:
                running.deadline = until
            self.lease_extensions += 1
