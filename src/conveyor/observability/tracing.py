"""OpenTelemetry tracing across steps: W3C trace context travels in the envelope.

Only the OpenTelemetry API is used; with no SDK configured, tracing costs nothing (no context is
injected and no span is started). Span names and attributes follow the messaging conventions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from conveyor.model.envelope import Envelope
from conveyor.model.text import cut

_TRACER_NAME = "conveyor"
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def sdk_configured() -> bool:
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class Tracing:
    """Injects and extracts trace context; starts producer/consumer spans when enabled."""

    def __init__(self, enabled: bool | None = None, provider: trace.TracerProvider | None = None) -> None:
        self._requested = enabled if provider is None or enabled is not None else True
        self.enabled = bool(self._requested)
        self._provider = provider
        self._cached: trace.Tracer | None = None

    def activate(self) -> None:
        """Decide, when the app starts, whether to trace (``None``: when an SDK is configured)."""
        self.enabled = sdk_configured() if self._requested is None else self._requested
        self._cached = None

    def _tracer(self) -> trace.Tracer:
        # get_tracer builds a new tracer (and scope) on every call: keep the one we got
        if self._cached is None:
            self._cached = trace.get_tracer(_TRACER_NAME, tracer_provider=self._provider)
        return self._cached

    def inject(self) -> dict[str, str] | None:
        if not self.enabled:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    def consume(
        self, envelope: Envelope, queue: str, job_id: str, attempt: int
    ) -> AbstractContextManager[Span | None]:
        """The consumer span of one attempt (a child of the producer's span), or nothing."""
        if not self.enabled:
            return _NO_SPAN
        return self._consume(envelope, queue, job_id, attempt)

    @contextmanager
    def _consume(self, envelope: Envelope, queue: str, job_id: str, attempt: int) -> Iterator[Span | None]:
        try:
            parent = propagate.extract(envelope.trace or {})
        except Exception:  # trace context a foreign producer wrote and a propagator chokes on
            parent = None  # (the attempt must not fail for it): this span starts a new trace
        attributes: dict[str, Any] = {
            "messaging.system": "conveyor",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "messaging.message.conversation_id": envelope.correlation_id,
            "conveyor.attempt": attempt,
            "conveyor.correlation_id": envelope.correlation_id,
        }
        if envelope.kind == "event":
            attributes["conveyor.event"] = envelope.name
        with self._tracer().start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @contextmanager
    def produce(self, operation: str, destination: str) -> Iterator[None]:
        """A producer span around ``app.enqueue``/``app.emit`` outside handlers."""
        if not self.enabled:
            yield
            return
        with self._tracer().start_as_current_span(
            f"send {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "conveyor",
                "messaging.operation.type": "send",
                "messaging.operation.name": operation,
                "messaging.destination.name": destination,
            },
        ):
            yield


MAX_STATUS_CHARS = 4_000
"""An error message is cut to this length in a span's status and exception event."""


def record_failure(span: Span | None, error: BaseException) -> None:
    """Mark the attempt's span failed with ``error``. Never raises: the job's own outcome (a retry or
    its dead letter) must not be lost to an exception whose ``__str__`` raises."""
    if span is None:
        return
    try:
        message = str(error)
    except Exception:
        message = "(whose str() raised)"
        description = f"{type(error).__name__} {message}"
    else:
        message = cut(message, MAX_STATUS_CHARS)  # a 5 MB message must not reach the exporter whole
        description = f"{type(error).__name__}: {message}"
    with suppress(Exception):  # the SDK calls str(error) too; the message given here wins
        span.record_exception(error, attributes={"exception.message": message})
    span.set_status(Status(StatusCode.ERROR, description))
