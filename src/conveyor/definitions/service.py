"""Services and their definitions: queue workers, subscriptions, schedules and commands.

Definitions only: nothing here does I/O. An :class:`~conveyor.app.App` wires services to backends.

>>> orders = Service("orders", version="1", description="Order fulfillment")
>>> @orders.queue_worker("send_confirmation", "Mail the customer", emits=["confirmation_sent"])
... async def send_confirmation(ctx, job): ...
>>> orders.definitions["send_confirmation"].emits
frozenset({'confirmation_sent'})
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from conveyor.definitions.approval import ApprovalGate
from conveyor.definitions.handlers import (
    COMMAND,
    DEAD_LETTER,
    QUEUE_WORKER,
    SCHEDULE,
    SUBSCRIPTION,
    check_handler,
    check_tick_annotation,
)
from conveyor.model.errors import ConfigurationError
from conveyor.model.lifecycle import Lifecycle, Seconds, seconds

CatchUp = Literal["none", "latest", "all"]
DefinitionKind = Literal["queue", "subscription", "schedule", "approval"]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Handler = Callable[..., Awaitable[Any]]
DeadLetterHandler = Callable[[Any, Any, BaseException], Awaitable[None]]
"""``async def on_dead_letter(ctx, payload, error)``; ``ctx`` is a :class:`~conveyor.Context`, which
this layer does not import (definitions sit below the runtime)."""

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def check_name(kind: str, name: str) -> str:
    """Names are snake_case (dots allowed to namespace: ``billing.invoice_created``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(f"{kind} name {name!r} must be snake_case, like 'order_placed'")
    return name


def _payload_model(handler: Callable[..., Any], position: int) -> type[BaseModel] | None:
    """The pydantic model annotated on the handler's ``position``-th parameter, if any."""
    params = list(inspect.signature(handler).parameters.values())
    if len(params) <= position:
        return None
    try:
        hints = typing.get_type_hints(handler)
    except Exception:
        return None
    hint = hints.get(params[position].name)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


def _declared(kind: str, names: Iterable[str]) -> frozenset[str]:
    """The checked names a handler declares it ``emits`` (events) or ``enqueues`` (queues)."""
    if isinstance(names, str):  # emits="order_placed": one name, not its letters
        names = [names]
    return frozenset(check_name(kind, name) for name in names)


@dataclass(eq=False)
class QueueWorker(Generic[F]):
    """A queue and the handler that works its jobs. Subscriptions and schedules are queues too.

    Calling it calls the handler, so it stays testable as a plain function.
    """

    service: Service
    name: str
    description: str
    handler: F
    payload: type[BaseModel] | None
    emits: frozenset[str]
    lifecycle: Lifecycle
    kind: DefinitionKind = "queue"
    event: str | None = None
    """For a subscription: the event it consumes."""
    schedule: Schedule | None = None
    dead_letter_handler: DeadLetterHandler | None = None
    compensate: str | None = None
    """Saga shape: the queue that undoes this step (see :mod:`conveyor.runtime.saga`)."""
    dead_letter_emits: frozenset[str] | None = None
    """What ``on_dead_letter`` may emit; ``None``: anything (not declared)."""
    dead_letter_event: str | None = None
    """The event emitted, in the same commit, when one of this queue's jobs is dead-lettered
    (payload: job_id, queue, attempts, error {type, message}, and the job's payload)."""
    enqueues: frozenset[str] | None = None
    """The queues the handler may ``ctx.enqueue`` to, enforced once declared (even empty, as for
    ``emits``); ``None``: not declared, any queue of the app (the graph cannot draw those)."""
    dead_letter_enqueues: frozenset[str] | None = None
    """What ``on_dead_letter`` may enqueue to; ``None``: anything (not declared)."""
    takes_tick: bool = False
    """For a schedule: whether the handler takes the :class:`ScheduleTick` (``(ctx, tick)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

    @typing.overload
    def on_dead_letter(self, handler: DeadLetterHandler) -> DeadLetterHandler: ...

    @typing.overload
    def on_dead_letter(
        self, *, emits: Iterable[str] | None = None, enqueues: Iterable[str] | None = None
    ) -> Callable[[DeadLetterHandler], DeadLetterHandler]: ...

    def on_dead_letter(
        self,
        handler: DeadLetterHandler | None = None,
        *,
        emits: Iterable[str] | None = None,
        enqueues: Iterable[str] | None = None,
    ) -> Any:
        """Register ``handler(ctx, payload, error)`` to run when a job moves to the dead-letter queue.

        Its emits and enqueues commit together with the move: this is where compensation goes.
        ``@worker.on_dead_letter(emits=["inventory_check_failed"])`` declares (and enforces) what it
        emits, and ``enqueues=[...]`` the queues it enqueues to; the bare ``@worker.on_dead_letter``
        form may emit and enqueue anything.
        ``payload`` is the validated job, or ``None`` when the job could not be decoded.
        """
        if emits is not None:
            self.dead_letter_emits = _declared("event", emits)
        if enqueues is not None:
            self.dead_letter_enqueues = _declared("queue", enqueues)

        def register(hook: DeadLetterHandler) -> DeadLetterHandler:
            check_handler(DEAD_LETTER, self.name, hook)
            self.dead_letter_handler = hook
            return hook

        return register(handler) if handler is not None else register

    @property
    def accepts_payload(self) -> bool:
        return self.kind != "schedule"


@dataclass(frozen=True)
class Schedule:
    """When a schedule fires: a cron expression in ``tz`` or a fixed interval ``every`` seconds."""

    cron: str | None
    every: float | None
    tz: str
    catch_up: CatchUp
    misfire_grace: float


@dataclass(eq=False)
class Command:
    """A request/response entry point, run in the caller's process by ``app.invoke``."""

    service: Service
    name: str
    description: str
    handler: Handler
    payload: type[BaseModel] | None
    result: type[BaseModel] | None
    emits: frozenset[str]
    enqueues: frozenset[str] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


@dataclass(frozen=True)
class Route:
    """A subscription in shortcut form: every ``event`` becomes a job in ``queue``."""

    event: str
    queue: str


@dataclass(eq=False)
class Service:
    """A named group of queue workers, subscriptions, schedules and commands.

    ``emits`` declared on a handler are enforced at run time: emitting anything else is an error.
    """

    name: str
    version: str = "1"
    description: str = ""
    definitions: dict[str, QueueWorker[Any]] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    gates: dict[str, ApprovalGate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("service", self.name)

    @property
    def timer_queues(self) -> set[str]:
        """The queues of this service's approval gates' timers (the registry defines them)."""
        return {gate.timer_queue for gate in self.gates.values()}

    def _add(self, definition: QueueWorker[Any]) -> None:
        if definition.name in self.definitions or definition.name in self.timer_queues:
            raise ConfigurationError(f"service {self.name!r} already defines queue {definition.name!r}")
        self.definitions[definition.name] = definition

    def queue_worker(
        self,
        name: str,
        description: str = "",
        *,
        payload: type[BaseModel] | None = None,
        emits: Iterable[str] = (),
        enqueues: Iterable[str] | None = None,
        lifecycle: Lifecycle | None = None,
        compensate: str | None = None,
        dead_letter_event: str | None = None,
    ) -> Callable[[F], QueueWorker[F]]:
        """Declare the queue ``name`` and its handler ``async def handler(ctx, job)``.

        ``emits`` names the events the handler may ``ctx.emit`` and ``enqueues`` the queues it may
        ``ctx.enqueue`` to; anything else raises at run time, and the graph draws both. Left out,
        ``enqueues`` is not checked (existing handlers keep working) and draws nothing.

        ``payload`` is the pydantic model of a job (taken from the handler's annotation when
        omitted); a job that fails validation goes to the dead-letter queue without retry.
        ``compensate`` names the queue that undoes this step (it gets this step's payload) when a
        later step of the same workflow instance is dead-lettered; see :mod:`conveyor.runtime.saga`.
        ``dead_letter_event`` names an event emitted when a job of this queue is dead-lettered,
        committed with the move (subscribe to it to alert or compensate declaratively; it runs
        beside ``on_dead_letter``, which it does not replace).
        """
        if compensate is not None:
            check_name("queue", compensate)
        if dead_letter_event is not None:
            check_name("event", dead_letter_event)
        check_name("queue", name)
        declared = _declared("event", emits)
        targets = None if enqueues is None else _declared("queue", enqueues)

        def decorate(handler: F) -> QueueWorker[F]:
            check_handler(QUEUE_WORKER, name, handler)
            model = payload or _payload_model(handler, 1)
            definition = QueueWorker(
                self,
                name,
                description or (handler.__doc__ or "").strip(),
                handler,
                model,
                declared,
                lifecycle or Lifecycle(),
                compensate=compensate,
                dead_letter_event=dead_letter_event,
                enqueues=targets,
            )
            self._add(definition)
            return definition

        return decorate

    @typing.overload
    def subscription(self, event: str, *, enqueue: str, name: str | None = None) -> Callable[[F], F]: ...

    @typing.overload
    def subscription(
        self,
        event: str,
        description: str = "",
        *,
        name: str | None = None,
        payload: type[BaseModel] | None = None,
        emits: Iterable[str] = (),
        enqueues: Iterable[str] | None = None,
        lifecycle: Lifecycle | None = None,
        dead_letter_event: str | None = None,
    ) -> Callable[[F], QueueWorker[F]]: ...

    def subscription(
        self,
        event: str,
        description: str = "",
        *,
        enqueue: str | None = None,
        name: str | None = None,
        payload: type[BaseModel] | None = None,
        emits: Iterable[str] = (),
        enqueues: Iterable[str] | None = None,
        lifecycle: Lifecycle | None = None,
        dead_letter_event: str | None = None,
    ) -> Callable[[F], Any]:
        """React to ``event``.

        Shortcut form, ``subscription("inventory_reserved", enqueue="process_payment")``: every such
        event becomes a job of queue ``process_payment`` with the event's payload. It is registered
        when called; used as a decorator it returns the function unchanged.

        Handler form: ``async def handler(ctx, event)`` runs in a queue of its own (named after the
        function unless ``name=`` is given) with lease, retry and dead-letter like any queue
        (``emits``, ``enqueues`` and ``dead_letter_event`` as for :meth:`queue_worker`).
        """
        check_name("event", event)
        if dead_letter_event is not None:
            check_name("event", dead_letter_event)
        if enqueue is not None:
            self.routes.append(Route(event, check_name("queue", enqueue)))

            def keep(handler: F) -> F:
                return handler

            return keep
        declared = _declared("event", emits)
        targets = None if enqueues is None else _declared("queue", enqueues)

        def decorate(handler: F) -> QueueWorker[F]:
            queue = check_name("subscription", name or str(getattr(handler, "__name__", "")))
            check_handler(SUBSCRIPTION, queue, handler)
            model = payload or _payload_model(handler, 1)
            definition = QueueWorker(
                self,
                queue,
                description or (handler.__doc__ or "").strip(),
                handler,
                model,
                declared,
                lifecycle or Lifecycle(),
                kind="subscription",
                event=event,
                dead_letter_event=dead_letter_event,
                enqueues=targets,
            )
            self._add(definition)
            self.routes.append(Route(event, queue))
            return definition

        return decorate

    def schedule(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: Seconds | None = None,
        tz: str = "UTC",
        catch_up: CatchUp = "latest",
        misfire_grace: Seconds = 60.0,
        description: str = "",
        emits: Iterable[str] = (),
        enqueues: Iterable[str] | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> Callable[[F], QueueWorker[F]]:
        """Run ``async def handler(ctx, tick: ScheduleTick)`` (or ``handler(ctx)``) on a cron
        expression (in ``tz``) or ``every`` N seconds.

        The tick (:class:`~conveyor.definitions.handlers.ScheduleTick`) says which one it runs for.
        Its workflow instance is named ``schedule:<name>:<iso tick>``.

        Every replica's scheduler enqueues each tick with the idempotency key
        ``schedule:<name>:<tick-iso>``, so a tick runs once however many replicas run. After
        downtime, missed ticks follow ``catch_up``: ``"none"`` skips them (a tick later than
        ``misfire_grace`` is missed), ``"latest"`` runs the most recent one, ``"all"`` runs each.
        """
        check_name("schedule", name)
        if (cron is None) == (every is None):
            raise ConfigurationError(f"schedule {name!r} needs exactly one of cron= or every=")
        if catch_up not in ("none", "latest", "all"):
            raise ConfigurationError(f"schedule {name!r}: catch_up must be none, latest or all")
        if cron is not None:
            from croniter import croniter

            if not croniter.is_valid(cron):
                raise ConfigurationError(f"schedule {name!r}: invalid cron expression {cron!r}")
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(tz)
        except Exception as exc:
            raise ConfigurationError(f"schedule {name!r}: unknown time zone {tz!r}") from exc
        interval = None if every is None else seconds(every)
        if interval is not None and interval <= 0:
            raise ConfigurationError(f"schedule {name!r}: every= must be positive")
        spec = Schedule(cron, interval, tz, catch_up, seconds(misfire_grace))
        declared = _declared("event", emits)
        targets = None if enqueues is None else _declared("queue", enqueues)

        def decorate(handler: F) -> QueueWorker[F]:
            takes_tick = check_handler(SCHEDULE, name, handler) == 2
            if takes_tick:
                check_tick_annotation(name, handler)
            definition = QueueWorker(
                self,
                name,
                description or (handler.__doc__ or "").strip(),
                handler,
                None,
                declared,
                lifecycle or Lifecycle(max_attempts=3),
                kind="schedule",
                schedule=spec,
                enqueues=targets,
                takes_tick=takes_tick,
            )
            self._add(definition)
            return definition

        return decorate

    def approval_gate(self, name: str, *, timeout: Seconds, description: str = "") -> ApprovalGate:
        """Declare a human approval gate (see :mod:`conveyor.definitions.approval`).

        Its events are ``<name>_requested``, ``<name>_approved``, ``<name>_rejected`` and
        ``<name>_timed_out``; subscribe to them to resume the workflow. Its timer queue
        ``<name>.timeout`` is added by the :class:`~conveyor.definitions.registry.Registry`, which is
        given the runtime's timer handler.
        """
        check_name("approval gate", name)
        limit = seconds(timeout)
        if limit <= 0:
            raise ConfigurationError(f"approval gate {name!r}: timeout must be positive")
        gate = ApprovalGate(name, limit, description)
        if name in self.gates:
            raise ConfigurationError(f"service {self.name!r} already defines approval gate {name!r}")
        if gate.timer_queue in self.definitions:
            raise ConfigurationError(f"service {self.name!r} already defines queue {gate.timer_queue!r}")
        self.gates[name] = gate
        return gate

    def command(
        self,
        name: str,
        description: str = "",
        *,
        payload: type[BaseModel] | None = None,
        result: type[BaseModel] | None = None,
        emits: Iterable[str] = (),
        enqueues: Iterable[str] | None = None,
    ) -> Callable[[F], Command]:
        """A request/response entry point ``async def handler(ctx, cmd) -> result``.

        Its emits and enqueues (declared in ``emits`` and ``enqueues``, as for
        :meth:`queue_worker`) commit when it returns; nothing commits if it raises.
        """
        check_name("command", name)
        declared = _declared("event", emits)
        targets = None if enqueues is None else _declared("queue", enqueues)

        def decorate(handler: F) -> Command:
            check_handler(COMMAND, name, handler)
            if name in self.commands:
                raise ConfigurationError(f"service {self.name!r} already defines command {name!r}")
            command = Command(
                self,
                name,
                description or (handler.__doc__ or "").strip(),
                handler,
                payload or _payload_model(handler, 1),
                result,
                declared,
                targets,
            )
            self.commands[name] = command
            return command

        return decorate
