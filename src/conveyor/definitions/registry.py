"""What an app's services define, indexed by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conveyor.definitions.approval import ApprovalGate
from conveyor.definitions.service import Command, Handler, QueueWorker, Route, Service, check_name
from conveyor.model.errors import (
    ConfigurationError,
    UnknownApprovalGateError,
    UnknownCommandError,
    UnknownQueueError,
)
from conveyor.model.lifecycle import Lifecycle

EXTERNAL_HINT = (
    " (a queue another app serves: name it in App(external_queues=[...]), "
    "or pass external=True to app.enqueue)"
)


class Registry:
    """Queues (workers, subscriptions, schedules), commands and routes of a set of services.

    ``external_queues`` are queues no service here declares that this app may still enqueue to,
    because another app serves them. ``gate_timer`` is the handler of every approval gate's timer
    queue (``<gate>.timeout``): the runtime's, given here so that definitions need not import it.
    """

    def __init__(
        self, services: Iterable[Service], external_queues: Iterable[str] = (), *, gate_timer: Handler
    ) -> None:
        self.services = list(services)
        self.external_queues = frozenset(check_name("queue", name) for name in external_queues)
        self.queues: dict[str, QueueWorker[Any]] = {}
        self.commands: dict[str, Command] = {}
        self.routes: list[Route] = []
        self.gates: dict[str, ApprovalGate] = {}
        names = set()
        for service in self.services:
            if service.name in names:
                raise ConfigurationError(f"two services are named {service.name!r}")
            names.add(service.name)
            for definition in service.definitions.values():
                self._add_queue(definition)
            for name, command in service.commands.items():
                if name in self.commands:
                    raise ConfigurationError(f"command {name!r} is defined twice")
                self.commands[name] = command
            for gate_name, gate in service.gates.items():
                if gate_name in self.gates:
                    raise ConfigurationError(f"approval gate {gate_name!r} is defined twice")
                self.gates[gate_name] = gate
                self._add_queue(
                    QueueWorker(
                        service,
                        gate.timer_queue,
                        f"timeout of approval gate {gate_name}",
                        gate_timer,
                        None,
                        frozenset({gate.event("timed_out")}),
                        Lifecycle(),
                        kind="approval",
                    )
                )
            for route in service.routes:
                if route not in self.routes:
                    self.routes.append(route)
        if both := sorted(self.external_queues & self.queues.keys()):
            raise ConfigurationError(
                f"external_queues names {', '.join(map(repr, both))}, which a service of this app declares"
            )

    def _add_queue(self, definition: QueueWorker[Any]) -> None:
        name = definition.name
        if name in self.queues:
            other = self.queues[name].service.name
            raise ConfigurationError(
                f"queue {name!r} is defined by services {other!r} and {definition.service.name!r}"
            )
        self.queues[name] = definition

    @property
    def known_queues(self) -> set[str]:
        """Every queue this app knows of: its own and the external ones."""
        return self.queues.keys() | self.external_queues

    def destination(self, name: str, *, external: bool = False) -> QueueWorker[Any] | None:
        """The definition of queue ``name`` that a job is enqueued to; None for an external one.

        Raises :class:`UnknownQueueError` (with the closest declared names) for a queue that no
        service declares and that is not external (nor ``external=True`` for this one call): the
        job would be stored where nothing of this app ever runs it.
        """
        definition = self.queues.get(name)
        if definition is None and not external and name not in self.external_queues:
            raise UnknownQueueError.among("queue", name, self.known_queues, EXTERNAL_HINT)
        return definition

    def queue(self, name: str) -> QueueWorker[Any]:
        try:
            return self.queues[name]
        except KeyError:
            raise UnknownQueueError.among("queue", name, self.queues) from None

    def command(self, name: str) -> Command:
        try:
            return self.commands[name]
        except KeyError:
            raise UnknownCommandError.among("command", name, self.commands) from None

    def gate(self, name: str) -> ApprovalGate:
        try:
            return self.gates[name]
        except KeyError:
            raise UnknownApprovalGateError.among("approval gate", name, self.gates) from None

    @property
    def timer_queues(self) -> set[str]:
        """The approval gates' timer queues, fed by ``ctx.request_approval``."""
        return {gate.timer_queue for gate in self.gates.values()}

    @property
    def schedules(self) -> list[QueueWorker[Any]]:
        return [q for q in self.queues.values() if q.schedule is not None]

    def declared_events(self) -> set[str]:
        events = {route.event for route in self.routes}
        for definition in self.queues.values():
            events |= definition.emits
        for command in self.commands.values():
            events |= command.emits
        for gate in self.gates.values():
            events |= gate.events
        return events
