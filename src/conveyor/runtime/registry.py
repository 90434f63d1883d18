"""What an app's services define, indexed by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conveyor.model.errors import ConfigurationError, UnknownQueueError
from conveyor.service import Command, QueueWorker, Route, Service
from conveyor.workflows.approval import ApprovalGate


class Registry:
    """Queues (workers, subscriptions, schedules), commands and routes of a set of services."""

    def __init__(self, services: Iterable[Service]) -> None:
        self.services = list(services)
        self.queues: dict[str, QueueWorker[Any]] = {}
        self.commands: dict[str, Command] = {}
        self.routes: list[Route] = []
        self.gates: dict[str, ApprovalGate] = {}
        names = set()
        for service in self.services:
            if service.name in names:
                raise ConfigurationError(f"two services are named {service.name!r}")
            names.add(service.name)
            for name, definition in service.definitions.items():
                if name in self.queues:
                    other = self.queues[name].service.name
                    raise ConfigurationError(
                        f"queue {name!r} is defined by services {other!r} and {service.name!r}"
                    )
                self.queues[name] = definition
            for name, command in service.commands.items():
                if name in self.commands:
                    raise ConfigurationError(f"command {name!r} is defined twice")
                self.commands[name] = command
            for gate_name, gate in service.gates.items():
                if gate_name in self.gates:
                    raise ConfigurationError(f"approval gate {gate_name!r} is defined twice")
                self.gates[gate_name] = gate
            for route in service.routes:
                if route not in self.routes:
                    self.routes.append(route)

    def queue(self, name: str) -> QueueWorker[Any]:
        try:
            return self.queues[name]
        except KeyError:
            raise UnknownQueueError(f"no service of this app defines queue {name!r}") from None

    def command(self, name: str) -> Command:
        try:
            return self.commands[name]
        except KeyError:
            raise UnknownQueueError(f"no service of this app defines command {name!r}") from None

    def gate(self, name: str) -> ApprovalGate:
        try:
            return self.gates[name]
        except KeyError:
            raise UnknownQueueError(f"no service of this app declares approval gate {name!r}") from None

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
