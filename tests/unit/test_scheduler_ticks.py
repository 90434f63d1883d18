"""Tick arithmetic of schedules: cron in a time zone, fixed intervals, catch-up bounds."""

from __future__ import annotations

from datetime import UTC, datetime

from conveyor.definitions.service import Schedule
from conveyor.runtime.scheduler import MAX_CATCH_UP, next_tick, previous_tick, tick_key, ticks_between


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def cron(expr: str, tz: str = "UTC") -> Schedule:
    return Schedule(expr, None, tz, "latest", 60.0)


def test_cron_ticks_between_two_times() -> None:
    ticks = ticks_between(
        cron("0 2 * * *"), ts("2026-11-01T00:00:00+00:00"), ts("2026-11-04T02:00:00+00:00"), 100
    )
    assert [datetime.fromtimestamp(t, UTC).isoformat() for t in ticks] == [
        "2026-11-01T02:00:00+00:00",
        "2026-11-02T02:00:00+00:00",
        "2026-11-03T02:00:00+00:00",
        "2026-11-04T02:00:00+00:00",
    ]


def test_cron_follows_its_time_zone_across_daylight_saving() -> None:
    schedule = cron("0 9 * * *", "Europe/Berlin")
    ticks = ticks_between(schedule, ts("2026-10-23T12:00:00+00:00"), ts("2026-10-25T12:00:00+00:00"), 10)
    # 09:00 in Berlin is 07:00 UTC in summer time (24 Oct) and 08:00 UTC from 25 October
    assert [datetime.fromtimestamp(t, UTC).hour for t in ticks] == [7, 8]


def test_interval_ticks_are_aligned_and_bounded() -> None:
    schedule = Schedule(None, 60.0, "UTC", "all", 60.0)
    assert ticks_between(schedule, 1000.0, 1200.0, 100) == [1020.0, 1080.0, 1140.0, 1200.0]
    assert ticks_between(schedule, 0.0, 60.0 * (MAX_CATCH_UP + 50), MAX_CATCH_UP)[0] == 60.0 * 51
    assert previous_tick(schedule, 1199.0) == 1140.0 and next_tick(schedule, 1200.0) == 1260.0


def test_previous_and_next_cron_tick() -> None:
    schedule = cron("*/15 * * * *")
    assert previous_tick(schedule, ts("2026-11-27T10:20:00+00:00")) == ts("2026-11-27T10:15:00+00:00")
    assert previous_tick(schedule, ts("2026-11-27T10:30:00+00:00")) == ts("2026-11-27T10:30:00+00:00")
    assert next_tick(schedule, ts("2026-11-27T10:30:00+00:00")) == ts("2026-11-27T10:45:00+00:00")


def test_tick_idempotency_key_is_stable_iso_utc() -> None:
    assert (
        tick_key("nightly", ts("2026-11-27T02:00:00+00:00")) == "schedule:nightly:2026-11-27T02:00:00+00:00"
    )
