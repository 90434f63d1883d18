"""The handler's view of the world: ``ctx``. Every write is buffered and commits with the job."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from conveyor.model.envelope import Envelope
from conveyor.model.errors import (
    JobCancelledError,
    LeaseLostError,
    NotInJobError,
    PayloadValidationError,
    UndeclaredEmitError,
    UndeclaredEnqueueError,
)
from conveyor.model.history import HistoryKind
from conveyor.model.lifecycle import DEFAULT_OPTIONS, JobOptions, Seconds, seconds
from conveyor.model.text import require_storable
from conveyor.ports import HistoryEntry, LeasedJob, StateWrite
from conveyor.runtime import approval, producer
from conveyor.runtime.buffer import EffectsBuffer
from conveyor.runtime.messages import Origin, validate
from conveyor.runtime.runtime import Resources, Runtime
from conveyor.runtime.states import States
from conveyor.runtime.watch import Running

if TYPE_CHECKING:
    from opentelemetry.trace import Span


@dataclass(slots=True, frozen=True)
class JobInfo:
    """The job being worked: ``ctx.job``."""

    id: str
    queue: str
    attempt: int
    max_attempts: int
    enqueued_at: float


class Context:
    """What a handler gets as ``ctx``.

    ``emit``, ``enqueue``, ``cancel`` and state writes are buffered and commit atomically with the
    job's acknowledgement: a failed attempt leaves nothing behind, and an attempt whose lease was
    lost cannot commit.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        service: str | None,
        service_version: str | None,
        emits: frozenset[str] | None,
        enqueues: frozenset[str] | None = None,
        envelope: Envelope | None = None,
        leased: LeasedJob | None = None,
        max_attempts: int = 1,
        logger: logging.Logger | None = None,
        log_fields: dict[str, object] | None = None,
        span: Span | None = None,
        running: Running | None = None,
    ) -> None:
        self.runtime = runtime
        self.message = envelope
        self.emits = emits
        self.enqueues = enqueues
        self.buffer = EffectsBuffer(envelope.id if envelope is not None else None)
        self._states: States | None = None
        self._leased = leased
        self._service = service
        self._service_version = service_version
        self._max_attempts = max_attempts
        self._logger = logger
        self._log_fields = log_fields
        self._adapter: logging.LoggerAdapter[logging.Logger] | None = None
        self._span = span
        self._running = running

    # read-only facts (built on first use: most handlers touch few of them)

    @property
    def states(self) -> States:
        """The state store; writes commit with this job."""
        if self._states is None:
            self._states = States(self.runtime, self._journal)
        return self._states

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry service, queue, job id, attempt, correlation and trace ids."""
        if self._adapter is None:
            self._adapter = logging.LoggerAdapter(
                self._logger or logging.getLogger("conveyor.handler"), self._log_fields or {}
            )
        return self._adapter

    @property
    def _origin(self) -> Origin:
        return Origin(self.message, self._service, self._service_version)

    @property
    def resources(self) -> Resources:
        return self.runtime.resources

    @property
    def job(self) -> JobInfo:
        """The job being worked. Every queue worker, subscription, schedule and ``on_dead_letter``
        has one; a command run by ``app.invoke`` has none, and raises :class:`NotInJobError`."""
        leased = self._leased
        if leased is None:
            raise NotInJobError(
                "ctx.job is read outside a job (a command run by app.invoke has none); check ctx.in_job first"
            )
        return JobInfo(leased.id, leased.queue, leased.attempt, self._max_attempts, leased.enqueued_at)

    @property
    def in_job(self) -> bool:
        """Whether this context works a job (so ``ctx.job`` is set)."""
        return self._leased is not None

    @property
    def correlation_id(self) -> str | None:
        return self.message.correlation_id if self.message is not None else None

    @property
    def idempotency_key(self) -> str | None:
        """Stable across every attempt of this job: hand it to payment providers and the like."""
        if self.message is None:
            return None
        return self.message.idempotency_key or self.message.id

    @property
    def span(self) -> Span:
        if self._span is not None:
            return self._span
        from opentelemetry import trace

        return trace.get_current_span()

    # effects

    def history(
        self, kind: HistoryKind, name: str, *, message_id: str | None = None, detail: str | None = None
    ) -> None:
        correlation_id = self.correlation_id
        if correlation_id is not None and self.runtime.history_enabled:
            self.buffer.effects.history.append(
                HistoryEntry(correlation_id, self.runtime.clock.now(), kind, name, message_id, None, detail)
            )

    def _trace(self) -> Origin:
        carrier = self.runtime.tracer.inject()
        origin = self._origin
        if carrier is None:
            return origin
        return Origin(origin.parent, origin.service, origin.service_version, carrier)

    async def emit(self, event: str, payload: Any = None, *, correlation_id: str | None = None) -> str:
        """Emit ``event`` (declared in ``emits=``); it is published when this job commits.

        ``correlation_id`` starts a new workflow instance (commands use it); by default the event
        belongs to the current one.
        """
        if self.emits is not None and event not in self.emits:
            declared = ", ".join(sorted(self.emits)) or "nothing"
            raise UndeclaredEmitError(
                f"emitted event {event!r} is not declared by this handler (it declares {declared}); "
                f"add it to emits=[...]"
            )
        return self._emit(event, payload, correlation_id)

    def _emit(self, event: str, payload: Any, correlation_id: str | None = None) -> str:
        self.buffer.check_open()
        new = producer.add_event(
            self.runtime,
            self.buffer.effects,
            event,
            payload,
            message_id=self.buffer.next_id(),
            origin=self._trace(),
            correlation_id=correlation_id or self.correlation_id,
        )
        return new.id

    async def enqueue(
        self,
        queue: str,
        payload: Any = None,
        *,
        delay: Seconds | None = None,
        run_at: datetime | float | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        visibility_timeout: Seconds | None = None,
    ) -> str:
        """Enqueue a job on ``queue``; it is stored when this job commits.

        Returns the new job's id (with an ``idempotency_key`` that is already taken, the stored job
        keeps its own id). A queue that no service declares, and that is not in
        ``App(external_queues=...)``, raises :class:`UnknownQueueError`. ``priority`` (-10 to 10:
        higher first), ``max_attempts`` and ``visibility_timeout`` are this job's own (see
        :class:`~conveyor.model.lifecycle.JobOptions`). A queue the handler did not declare in
        ``enqueues=[...]`` raises :class:`UndeclaredEnqueueError`.
        """
        if self.enqueues is not None and queue not in self.enqueues:
            self.runtime.registry.destination(queue)  # an unknown queue says so first, with suggestions
            declared = ", ".join(sorted(self.enqueues)) or "nothing"
            raise UndeclaredEnqueueError(
                f"enqueued to queue {queue!r}, which this handler does not declare (it declares "
                f"{declared}); add it to enqueues=[...]"
            )
        options = (
            DEFAULT_OPTIONS
            if priority == 0 and max_attempts is None and visibility_timeout is None
            else JobOptions(priority, max_attempts, visibility_timeout)
        )
        return self._enqueue(queue, payload, delay, idempotency_key, run_at=run_at, options=options)

    def _enqueue(
        self,
        queue: str,
        payload: Any,
        delay: Seconds | None,
        idempotency_key: str | None,
        *,
        run_at: datetime | float | None = None,
        options: JobOptions = DEFAULT_OPTIONS,
    ) -> str:
        """``enqueue`` without the declaration check: the runtime's own jobs (approval timers)."""
        buffer = self.buffer
        buffer.check_open()
        new = producer.add_job(
            self.runtime,
            buffer.effects,
            queue,
            payload,
            buffer.next_id(),
            self._trace(),
            delay,
            run_at,
            idempotency_key,
            self.correlation_id,
            options,
        )
        return new.id

    async def request_approval(
        self, gate: str, payload: Any = None, *, timeout: Seconds | None = None
    ) -> None:
        """Ask a human to decide at ``gate`` (declared with ``service.approval_gate``); the workflow
        waits for ``<gate>_approved``/``_rejected``, or ``_timed_out`` after the gate's timeout.

        The request, its timer and the ``<gate>_requested`` event commit with this job.
        """
        await approval.request(self, gate, payload, timeout, emit=self._emit)

    def _journal(self, write: StateWrite) -> None:
        """Where ``ctx.states`` hands its writes: into this job's commit, with a history entry."""
        self.buffer.check_open()
        self.buffer.effects.states.append(write)
        self.history(HistoryKind.STATE_CHANGED, write.key, detail=write.op.value)

    async def cancel(self, queue: str, idempotency_key: str) -> None:
        """Delete the pending (not running) job of ``queue`` with ``idempotency_key``, at commit."""
        self.buffer.check_open()
        require_storable(queue, "queue name")
        require_storable(idempotency_key, "idempotency key")
        self.buffer.effects.cancels.append((queue, idempotency_key))
        self.history(HistoryKind.CANCELLED, queue, detail=idempotency_key)

    async def invoke(self, command: str, payload: Any = None) -> Any:
        """Run a command in this process; its effects join this job's commit."""
        return await run_command(self.runtime, command, payload, parent=self)

    async def extend_lease(self, duration: Seconds) -> None:
        """Keep the job's lease for ``duration`` more seconds; raises :class:`LeaseLostError` if lost."""
        leased = self._leased
        if leased is None:
            return
        self.buffer.check_open()
        runtime = self.runtime
        now = runtime.clock.now()
        until = now + seconds(duration)
        if not await runtime.backend.extend(leased.id, leased.token, until, now):
            raise LeaseLostError(f"job {leased.id} of queue {leased.queue!r} lost its lease")
        if self._running is not None and until > self._running.deadline:
            self._running.deadline = until  # the worker's watch cancels the handler past it

    # cancellation

    @property
    def cancel_requested(self) -> bool:
        """Whether an operator asked to cancel this job (the worker looks every
        ``WorkerConfig.watch_interval``). A handler that ignores it just runs on."""
        return self._running is not None and self._running.cancel_requested

    async def cancellation(self) -> None:
        """Return once cancellation of this job is requested (at once if it was; never outside a
        job): race it against a long wait to stop early."""
        if self._running is None:
            await asyncio.Event().wait()
        else:
            await self._running.cancellation()

    def raise_if_cancel_requested(self) -> None:
        """Raise :class:`JobCancelledError` if cancellation was requested: the job is then settled
        as cancelled (no retry, no dead letter) and nothing it buffered commits."""
        if self.cancel_requested:
            leased = self._leased
            what = f"job {leased.id} of queue {leased.queue!r}" if leased is not None else "job"
            raise JobCancelledError(f"{what}: cancellation requested")


async def run_command(runtime: Runtime, name: str, payload: Any, *, parent: Context | None = None) -> Any:
    """Run command ``name``. Inside a handler (``parent``) its effects join the handler's; outside
    they commit when it returns."""
    command = runtime.registry.command(name)
    argument: Any = payload
    if command.payload is not None:
        if isinstance(payload, command.payload):
            argument = payload
        else:
            data = payload.model_dump() if isinstance(payload, BaseModel) else payload
            argument = validate(command.payload, data, f"command {name!r}")
    context = Context(
        runtime,
        service=command.service.name,
        service_version=command.service.version,
        emits=command.emits,
        enqueues=command.enqueues,
        envelope=parent.message if parent is not None else None,
        leased=parent._leased if parent is not None else None,
        max_attempts=parent._max_attempts if parent is not None else 1,
    )
    if parent is not None:
        context.buffer = parent.buffer
        context._running = parent._running
    result = await command.handler(context, argument)
    if command.result is not None and not isinstance(result, command.result):
        try:
            result = command.result.model_validate(result)
        except Exception as exc:
            raise PayloadValidationError(
                f"command {name!r} returned {type(result).__name__}, not {command.result.__name__}"
            ) from exc
    if parent is None and context.buffer.effects:
        await producer.commit(runtime, context.buffer.effects, what=f"command {name!r}")
    return result
