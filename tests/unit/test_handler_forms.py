"""Handler signatures are checked when declared; the tick reaches a schedule typed; ``ctx.job`` is a
``JobInfo`` inside a job and an error outside; ``enqueues=[...]`` is enforced like ``emits``."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor import (
    App,
    ConfigurationError,
    Context,
    JobInfo,
    NotInJobError,
    ScheduleTick,
    Service,
    UndeclaredEnqueueError,
    UnknownQueueError,
)
from conveyor.testing import FakeClock, running, wait_until


async def no_payload(ctx: Context) -> None: ...


async def two(ctx: Context, job: Any) -> None: ...


async def three(ctx: Context, payload: Any, error: BaseException) -> None: ...


def not_async(ctx: Context, job: Any) -> None: ...


@pytest.mark.parametrize(
    ("declare", "handler", "expected"),
    [
        (lambda s: s.queue_worker("work"), no_payload, r"async def no_payload\(ctx, job\)"),
        (lambda s: s.queue_worker("work"), three, r"async def three\(ctx, job\)"),
        (lambda s: s.queue_worker("work"), not_async, "not async def"),
        (lambda s: s.subscription("placed", name="react"), no_payload, r"\(ctx, event\)"),
        (lambda s: s.command("place"), no_payload, r"\(ctx, cmd\)"),
        (lambda s: s.schedule("nightly", every=60), three, r"\(ctx\) or async def three\(ctx, tick"),
    ],
)
def test_a_handler_of_the_wrong_form_is_refused_when_declared(
    declare: Any, handler: Any, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected) as refused:
        declare(Service("svc"))(handler)
    assert handler.__qualname__ in str(refused.value)  # names the handler and what it takes


def test_an_on_dead_letter_hook_must_take_ctx_payload_and_error() -> None:
    svc = Service("svc")
    worker = svc.queue_worker("work")(two)
    with pytest.raises(ConfigurationError, match=r"on_dead_letter hook 'work'.*\(ctx, payload, error\)"):
        worker.on_dead_letter(two)
    with pytest.raises(ConfigurationError, match="on_dead_letter"):
        worker.on_dead_letter(emits=["failed"])(no_payload)
    assert worker.on_dead_letter(three) is three


def test_extra_parameters_with_defaults_partials_and_async_callables_are_accepted() -> None:
    svc = Service("svc")

    async def with_default(ctx: Context, job: Any, retries: int = 3) -> None: ...

    async def bound(prefix: str, ctx: Context, job: Any) -> None: ...

    class Callable_:
        async def __call__(self, ctx: Context, job: Any) -> None: ...

    svc.queue_worker("a")(with_default)
    svc.queue_worker("b")(functools.partial(bound, "x"))
    svc.queue_worker("c")(Callable_())
    assert set(svc.definitions) == {"a", "b", "c"}


def test_a_schedule_takes_the_tick_or_not_and_a_mistyped_tick_is_refused() -> None:
    svc = Service("svc")

    async def with_tick(ctx: Context, tick: ScheduleTick) -> None: ...

    async def mistyped(ctx: Context, tick: str) -> None: ...

    assert svc.schedule("a", every=60)(with_tick).takes_tick
    assert not svc.schedule("b", every=60)(no_payload).takes_tick
    with pytest.raises(ConfigurationError, match="annotates its tick as <class 'str'>"):
        svc.schedule("c", every=60)(mistyped)


async def test_a_schedule_handler_gets_its_tick_and_runs_in_an_instance_named_by_it() -> None:
    svc, ticks = Service("svc"), list[tuple[ScheduleTick, str | None, JobInfo]]()
    clock = FakeClock(start=1_800_000_030.0)  # between two ticks: none is due at start

    @svc.schedule("every_minute", every=60)
    async def every_minute(ctx: Context, tick: ScheduleTick) -> None:
        ticks.append((tick, ctx.correlation_id, ctx.job))

    app = App([svc], backend="memory://", clock=clock)
    async with running(app):
        await wait_until(lambda: app.states.get("conveyor:schedule:every_minute"))  # its start is recorded
        clock.advance(60)
        await app._scheduler.fire_due()  # type: ignore[union-attr]
        await wait_until(lambda: ticks)
    [(tick, instance, job)] = ticks
    due = 1_800_000_060.0
    assert tick.schedule == "every_minute"
    assert tick.at == datetime.fromtimestamp(due, UTC)
    assert tick.key == instance == f"schedule:every_minute:{tick.at.isoformat()}"
    assert job.queue == "every_minute" and job.attempt == 1


async def test_ctx_job_outside_a_job_raises_not_in_job_error() -> None:
    svc = Service("svc")
    seen: list[bool] = []

    @svc.command("look")
    async def look(ctx: Context, cmd: Any) -> None:
        seen.append(ctx.in_job)
        ctx.job  # noqa: B018 - the read is what raises

    async with App([svc], backend="memory://") as app:
        with pytest.raises(NotInJobError, match="outside a job"):
            await app.invoke("look", {})
    assert seen == [False]


async def test_an_undeclared_enqueue_raises_and_a_declared_one_commits() -> None:
    svc, errors, ran = Service("svc"), list[BaseException](), list[str]()

    @svc.queue_worker("first", enqueues=["second"])
    async def first(ctx: Context, job: dict[str, Any]) -> None:
        for queue in ("third", "thrid"):
            try:
                await ctx.enqueue(queue, {})
            except (UndeclaredEnqueueError, UnknownQueueError) as exc:
                errors.append(exc)
        await ctx.enqueue("second", {})

    @svc.queue_worker("second")
    async def second(ctx: Context, job: dict[str, Any]) -> None:
        ran.append("second")

    @svc.queue_worker("third")
    async def third(ctx: Context, job: dict[str, Any]) -> None: ...

    app = App([svc], backend="memory://")
    async with running(app):
        await app.enqueue("first", {})
        await wait_until(lambda: ran)
    undeclared, unknown = errors
    assert isinstance(undeclared, UndeclaredEnqueueError)
    assert "'third'" in str(undeclared) and "enqueues=[...]" in str(undeclared)
    assert isinstance(unknown, UnknownQueueError) and unknown.suggestions == ["third"]


async def test_a_handler_that_declares_no_enqueues_is_not_checked_and_an_empty_list_allows_none() -> None:
    svc, outcomes = Service("svc"), dict[str, Any]()

    @svc.queue_worker("free")  # written before enqueues=[...] existed: keeps working
    async def free(ctx: Context, job: dict[str, Any]) -> None:
        outcomes["free"] = await ctx.enqueue("target", {})

    @svc.queue_worker("closed", enqueues=[])
    async def closed(ctx: Context, job: dict[str, Any]) -> None:
        try:
            await ctx.enqueue("target", {})
        except UndeclaredEnqueueError as exc:
            outcomes["closed"] = exc

    @svc.queue_worker("target")
    async def target(ctx: Context, job: dict[str, Any]) -> None: ...

    app = App([svc], backend="memory://")
    async with running(app):
        await app.enqueue("free", {})
        await app.enqueue("closed", {})
        await wait_until(lambda: len(outcomes) == 2)
    assert isinstance(outcomes["free"], str)
    assert "declares nothing" in str(outcomes["closed"])


def test_a_single_name_given_as_a_string_is_one_name_not_its_letters() -> None:
    svc = Service("svc")

    @svc.queue_worker("work", emits="order_placed", enqueues="ship")
    async def work(ctx: Context, job: Any) -> None: ...

    assert work.emits == {"order_placed"} and work.enqueues == {"ship"}
