"""Workflow states as docs/guide.md defines them ("Workflow states"), on every backend."""

from __future__ import annotations

from typing import Any

from conveyor import App, Context, Lifecycle, ScheduleTick, Service, WorkerConfig
from conveyor.operations.status import State
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import NO_JITTER


def make(backend_url: str, clock: FakeClock, svc: Service) -> App:
    return App([svc], backend=backend_url, clock=clock, worker=WorkerConfig(poll_interval=0.05))


async def _is(app: App, instance: str, state: State) -> bool:
    return (await app.workflows.status(instance)).state == state


async def test_retrying_scheduled_and_waiting_then_completed_without_the_old_error(
    backend_url: str,
) -> None:
    svc, clock, failures = Service("svc"), FakeClock(), [1]

    @svc.queue_worker("flaky", lifecycle=Lifecycle(max_attempts=3, retry=NO_JITTER))
    async def flaky(ctx: Context, job: dict[str, Any]) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("gateway down")

    @svc.subscription("noted")
    async def on_noted(ctx: Context, event: dict[str, Any]) -> None: ...

    app = make(backend_url, clock, svc)
    async with running(app):
        await app.enqueue("flaky", {}, correlation_id="r-1")
        await wait_until(lambda: _is(app, "r-1", "retrying"))
        assert (await app.workflows.status("r-1")).last_error == "RuntimeError: gateway down"
        await app.enqueue("flaky", {}, correlation_id="d-1", delay=600)
        assert await _is(app, "d-1", "scheduled")
        await app.queues.pause("on_noted")
        await app.emit("noted", {}, correlation_id="e-1")
        assert await _is(app, "e-1", "waiting")  # emitted, not consumed yet
        clock.advance(10)  # the retry is due
        await wait_until(lambda: _is(app, "r-1", "completed"))
        status = await app.workflows.status("r-1")
        assert status.last_error is None  # the failed attempt is history, not the instance's error
        assert status.steps[0].attempts == 2 and status.steps[0].last_error == "RuntimeError: gateway down"
        clock.advance(600)
        await wait_until(lambda: _is(app, "d-1", "completed"))
        await app.queues.resume("on_noted")
        await wait_until(lambda: _is(app, "e-1", "completed"))


async def test_a_redriven_dead_letter_leaves_compensated(backend_url: str) -> None:
    svc, clock, broken = Service("svc"), FakeClock(), [True]

    @svc.queue_worker("charge", lifecycle=Lifecycle(max_attempts=1))
    async def charge(ctx: Context, job: dict[str, Any]) -> None:
        if broken:
            raise RuntimeError("card declined")

    @charge.on_dead_letter
    async def refund(ctx: Context, job: Any, error: BaseException) -> None: ...

    app = make(backend_url, clock, svc)
    async with running(app):
        await app.enqueue("charge", {}, correlation_id="c-1")
        await wait_until(lambda: _is(app, "c-1", "compensated"))
        assert (await app.workflows.status("c-1")).last_error == "RuntimeError: card declined"
        broken.clear()
        [dead] = await app.dead_letters("charge").list()
        await app.queues.pause("charge")
        assert await app.dead_letters("charge").redrive([dead.id]) == 1
        assert await _is(app, "c-1", "running")  # enqueued again: no longer compensated
        await app.queues.resume("charge")
        await wait_until(lambda: _is(app, "c-1", "completed"))
        assert (await app.workflows.status("c-1")).last_error is None


async def test_schedule_ticks_are_named_by_tick_and_left_out_of_lists_unless_asked(
    backend_url: str,
) -> None:
    svc, clock, ran = Service("svc"), FakeClock(start=1_800_000_030.0), list[str]()

    @svc.schedule("minutely", every=60)
    async def minutely(ctx: Context, tick: ScheduleTick) -> None:
        ran.append(tick.key)

    @svc.queue_worker("plain")
    async def plain(ctx: Context, job: dict[str, Any]) -> None: ...

    app = make(backend_url, clock, svc)
    async with running(app):
        await app.enqueue("plain", {}, correlation_id="p-1")
        await wait_until(lambda: app.states.get("conveyor:schedule:minutely"))  # its start is recorded
        clock.advance(60)
        await app._scheduler.fire_due()  # type: ignore[union-attr]
        await wait_until(lambda: ran)
        [tick] = ran
        assert tick == "schedule:minutely:2027-01-15T08:01:00+00:00"
        await wait_until(lambda: _is(app, tick, "completed"))
        await wait_until(lambda: _is(app, "p-1", "completed"))
        assert [s.id for s in await app.workflows.list()] == ["p-1"]
        assert {s.id for s in await app.workflows.list(schedules=True)} == {"p-1", tick}
        assert [s.id for s in (await app.workflows.page()).items] == ["p-1"]
        assert [s.id for s in (await app.workflows.page(schedules=True)).items] == [tick, "p-1"]
        assert [s.id for s in (await app.workflows.page(prefix="schedule:")).items] == [tick]
