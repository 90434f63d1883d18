"""The runtime contract's schedules: one firing per tick across replicas, missed ticks caught up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from conveyor import App, Context, Service
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, Recorder, _polled, _stats


class SchedulesContract(AppFixtures):
    """Schedules (part of ``RuntimeContract``)."""

    async def test_schedule_fires_once_per_tick_with_two_schedulers_racing(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        clock.advance(3600 - clock.now() % 3600)  # on the hour

        @svc.schedule("every_minute", cron="* * * * *")
        async def every_minute(ctx: Context) -> None:
            assert ctx.message is not None
            rec.calls.append(("every_minute", ctx.message.payload["tick"], 0))

        replica_a, replica_b = make_app(svc), make_app(svc)
        async with running(replica_a), running(replica_b):
            for fired in range(1, 5):
                if fired > 1:  # both replicas race for the next tick
                    clock.advance(60)
                    await asyncio.gather(replica_a._scheduler.fire_due(), replica_b._scheduler.fire_due())  # type: ignore[union-attr]
                await wait_until(lambda: len(rec.calls) >= fired)  # noqa: B023
                await wait_until(lambda: _stats(replica_a, "every_minute", lambda s: s.ready + s.leased == 0))
            await _polled(replica_a, replica_b)
        ticks = rec.seen("every_minute")
        assert len(ticks) == len(set(ticks)) == 4

    @pytest.mark.parametrize(("catch_up", "expected"), [("none", 0), ("latest", 1), ("all", 5)])
    async def test_missed_ticks_follow_catch_up(
        self, make_app: Callable[..., App], clock: FakeClock, catch_up: str, expected: int
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        clock.advance(3600 - clock.now() % 3600 + 30)

        @svc.schedule("hourly", every=3600, catch_up=catch_up, misfire_grace=60)  # type: ignore[arg-type]
        async def hourly(ctx: Context) -> None:
            rec.calls.append(("hourly", None, 0))

        app = make_app(svc)
        async with running(app):  # first start records the schedule without firing past ticks
            await wait_until(lambda: app.states.get("conveyor:schedule:hourly"))
        clock.advance(5 * 3600 + 600)  # down for five ticks, back 10 minutes after the last
        async with running(app):
            if expected:
                await wait_until(lambda: len(rec.calls) == expected)
            await wait_until(lambda: _stats(app, "hourly", lambda s: s.ready + s.leased == 0))
            await _polled(app)
        assert len(rec.calls) == expected
