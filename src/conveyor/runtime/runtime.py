"""The runtime's shared parts: backend, clock, registry, resources, messages, tracing, metrics."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from conveyor.definitions.registry import Registry
from conveyor.observability.metrics import Metrics
from conveyor.observability.tracing import Tracing
from conveyor.ports import Backend
from conveyor.runtime.clock import Clock
from conveyor.runtime.messages import MessageFactory


class Resources(Mapping[str, Any]):
    """The app's resources, by attribute (``ctx.resources.inventory``) or by key."""

    def __init__(self, resources: Mapping[str, Any]) -> None:
        self._resources = dict(resources)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._resources[name]
        except KeyError:
            known = ", ".join(sorted(self._resources)) or "none"
            raise AttributeError(f"no resource named {name!r} (resources: {known})") from None

    def __getitem__(self, name: str) -> Any:
        return self._resources[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resources)

    def __len__(self) -> int:
        return len(self._resources)


class Runtime:
    """Everything a worker, a scheduler or a handler's context needs, in one place."""

    def __init__(
        self,
        *,
        backend: Backend,
        registry: Registry,
        clock: Clock,
        resources: Mapping[str, Any],
        messages: MessageFactory,
        tracer: Tracing,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.clock = clock
        self.resources = Resources(resources)
        self.messages = messages
        self.tracer = tracer
        self.metrics = metrics or Metrics(enabled=False)

    @property
    def history_enabled(self) -> bool:
        """Whether workflow history is recorded (one setting, kept by the message factory)."""
        return self.messages.history
