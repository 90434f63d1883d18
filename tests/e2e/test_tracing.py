"""Tracing: one trace per workflow, step k+1's span a child of step k's, messaging attributes."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import App, Context, Lifecycle, Service
from conveyor.testing import running, wait_until


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


async def test_a_three_step_chain_is_one_trace_of_parent_and_child_spans(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    backend_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service("chain")
    trace_ids: list[Any] = []

    @svc.queue_worker("step_one", emits=["one_done"])
    async def step_one(ctx: Context, job: dict[str, Any]) -> None:
        ctx.logger.info("first step")
        await ctx.emit("one_done", {})

    @svc.subscription("one_done", enqueues=["step_three"])
    async def step_two(ctx: Context, event: dict[str, Any]) -> None:
        await ctx.enqueue("step_three", {})

    @svc.queue_worker("step_three")
    async def step_three(ctx: Context, job: dict[str, Any]) -> None:
        trace_ids.append(ctx.span.get_span_context().trace_id)

    app = App([svc], backend=backend_url, tracing=provider)
    with caplog.at_level(logging.INFO, logger="conveyor.handler"):
        async with app, running(app):
            job_id = await app.enqueue("step_one", {}, correlation_id="wf-1")
            await wait_until(lambda: trace_ids)
            await wait_until(lambda: len(exporter.get_finished_spans()) == 4)
    spans = exporter.get_finished_spans()
    send, one, two, three = (
        by_name(spans, n)
        for n in ("send step_one", "process step_one", "process step_two", "process step_three")
    )
    assert send.kind is SpanKind.PRODUCER and one.kind is SpanKind.CONSUMER
    assert {s.context.trace_id for s in spans} == {send.context.trace_id} == set(trace_ids)
    assert one.parent is not None and one.parent.span_id == send.context.span_id
    assert two.parent is not None and two.parent.span_id == one.context.span_id
    assert three.parent is not None and three.parent.span_id == two.context.span_id
    assert dict(one.attributes or {}) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "step_one",
        "messaging.message.id": job_id,
        "messaging.message.conversation_id": "wf-1",
        "conveyor.attempt": 1,
        "conveyor.correlation_id": "wf-1",
    }
    assert (two.attributes or {})["conveyor.event"] == "one_done"
    [record] = [r for r in caplog.records if r.getMessage() == "first step"]
    assert record.correlation_id == "wf-1" and record.job_id == job_id  # type: ignore[attr-defined]
    assert record.trace_id == format(one.context.trace_id, "032x")  # type: ignore[attr-defined]


async def test_a_failed_attempt_records_the_exception_and_error_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    svc = Service("svc")

    @svc.queue_worker("broken", lifecycle=Lifecycle(max_attempts=1))
    async def broken(ctx: Context, job: dict[str, Any]) -> None:
        raise ValueError("no good")

    app = App([svc], backend="memory://", tracing=provider)
    async with running(app):
        await app.enqueue("broken", {})
        await wait_until(lambda: app.dead_letters("broken").list())
    span = by_name(exporter.get_finished_spans(), "process broken")
    assert span.status.status_code is StatusCode.ERROR and "ValueError: no good" in (
        span.status.description or ""
    )
    [event] = span.events
    assert event.name == "exception" and (event.attributes or {})["exception.type"] == "ValueError"


async def test_without_tracing_no_context_travels() -> None:
    svc = Service("svc")
    seen: list[Any] = []

    @svc.queue_worker("quiet")
    async def quiet(ctx: Context, job: dict[str, Any]) -> None:
        assert ctx.message is not None
        seen.append(ctx.message.trace)

    app = App([svc], backend="memory://", tracing=False)
    async with running(app):
        await app.enqueue("quiet", {})
        await wait_until(lambda: seen)
    assert seen == [None]


async def test_an_error_whose_str_raises_is_still_dead_lettered_on_its_attempt_when_traced(
    provider: TracerProvider, exporter: InMemorySpanExporter, backend_url: str
) -> None:
    svc = Service("svc")

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no text for you")

    @svc.queue_worker("broken", lifecycle=Lifecycle(max_attempts=1))
    async def broken(ctx: Context, job: dict[str, Any]) -> None:
        raise Unprintable

    app = App([svc], backend=backend_url, tracing=provider)
    async with app, running(app):
        await app.enqueue("broken", {})
        [entry] = await wait_until(lambda: app.dead_letters("broken").list())
    assert entry.attempts == 1 and "str() raised ValueError" in entry.error.message
    span = by_name(exporter.get_finished_spans(), "process broken")
    assert span.status.status_code is StatusCode.ERROR
    assert "Unprintable (whose str() raised)" in (span.status.description or "")


def test_a_huge_error_message_is_cut_in_the_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from conveyor.observability.tracing import MAX_STATUS_CHARS, record_failure

    with provider.get_tracer("test").start_as_current_span("attempt") as span:
        record_failure(span, RuntimeError("x" * 5_000_000))
    [finished] = exporter.get_finished_spans()
    assert finished.status.description is not None
    assert len(finished.status.description) < MAX_STATUS_CHARS + 100
    assert finished.status.description.endswith("[4,996,000 characters cut]")
    [event] = finished.events
    assert event.attributes is not None
    message = str(event.attributes["exception.message"])
    assert len(message) < MAX_STATUS_CHARS + 100
