"""The runtime's shared parts: backend, clock, registry, resources; commands run here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from conveyor.definitions.registry import Registry
from conveyor.model.errors import PayloadValidationError
from conveyor.observability.metrics import Metrics
from conveyor.observability.tracing import Tracing
from conveyor.ports import Backend
from conveyor.runtime.clock import Clock
from conveyor.runtime.committer import not_applied
from conveyor.runtime.context import Context, Resources
from conveyor.runtime.messages import MessageFactory, validate

logger = logging.getLogger("conveyor")


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

    async def invoke(self, name: str, payload: Any, *, parent: Context | None = None) -> Any:
        """Run command ``name``. Inside a handler its effects join the handler's; outside they
        commit when it returns."""
        command = self.registry.command(name)
        argument: Any = payload
        if command.payload is not None:
            if isinstance(payload, command.payload):
                argument = payload
            else:
                data = payload.model_dump() if isinstance(payload, BaseModel) else payload
                argument = validate(command.payload, data, f"command {name!r}")
        context = Context(
            self,
            service=command.service.name,
            service_version=command.service.version,
            emits=command.emits,
            envelope=parent.message if parent is not None else None,
        )
        if parent is not None:
            context.buffer = parent.buffer
        result = await command.handler(context, argument)
        if command.result is not None and not isinstance(result, command.result):
            try:
                result = command.result.model_validate(result)
            except Exception as exc:
                raise PayloadValidationError(
                    f"command {name!r} returned {type(result).__name__}, not {command.result.__name__}"
                ) from exc
        if parent is None and context.buffer.effects:
            [outcome] = await self.backend.commit([context.commit()], self.clock.now())
            if (error := not_applied(outcome, f"command {name!r}")) is not None:
                raise error
        return result
