"""The saga shape: a later step's dead letter undoes the completed steps in reverse order."""

from __future__ import annotations

from typing import Any

from conveyor import App, Context, Lifecycle, Service, Workflow
from conveyor.testing import running, wait_until

trip = Service("trip")
log: list[str] = []


@trip.queue_worker(
    "book_flight", emits=["flight_booked"], enqueues=["book_hotel"], compensate="cancel_flight"
)
async def book_flight(ctx: Context, job: dict[str, Any]) -> None:
    log.append(f"book flight {job['trip']}")
    await ctx.enqueue("book_hotel", job)


@trip.queue_worker("book_hotel", enqueues=["book_car"], compensate="cancel_hotel")
async def book_hotel(ctx: Context, job: dict[str, Any]) -> None:
    log.append(f"book hotel {job['trip']}")
    await ctx.enqueue("book_car", job)


@trip.queue_worker("book_car", lifecycle=Lifecycle(max_attempts=1))
async def book_car(ctx: Context, job: dict[str, Any]) -> None:
    if job.get("no_cars"):
        raise RuntimeError("no cars left")
    log.append(f"book car {job['trip']}")


@trip.queue_worker("cancel_hotel", emits=["hotel_cancelled"])
async def cancel_hotel(ctx: Context, job: dict[str, Any]) -> None:
    log.append(f"cancel hotel {job['trip']}")
    await ctx.emit("hotel_cancelled", {"trip": job["trip"]})


@trip.queue_worker("cancel_flight", emits=["trip_compensated"])
async def cancel_flight(ctx: Context, job: dict[str, Any]) -> None:
    log.append(f"cancel flight {job['trip']}")
    await ctx.emit("trip_compensated", {"trip": job["trip"]})


TRIP = Workflow("trip", start="trip_requested", compensated=["trip_compensated"])


async def test_completed_steps_are_undone_in_reverse_order(backend_url: str) -> None:
    log.clear()
    app = App([trip], backend=backend_url, workflows=[TRIP])
    async with app, running(app):
        await app.enqueue("book_flight", {"trip": "ok"}, correlation_id="trip-ok")
        await app.enqueue("book_flight", {"trip": "bad", "no_cars": True}, correlation_id="trip-bad")
        await wait_until(lambda: "cancel flight bad" in log and "book car ok" in log)
        status = await wait_until(lambda: _compensated(app, "trip-bad"))
        ok = await app.workflows.status("trip-ok")
    bad_log = [entry for entry in log if entry.endswith(" bad")]
    assert bad_log == ["book flight bad", "book hotel bad", "cancel hotel bad", "cancel flight bad"]
    assert "cancel flight ok" not in log and ok.state == "completed"
    assert status.compensations == ["cancel_hotel", "cancel_flight"]
    assert status.path == [
        "book_flight",
        "book_hotel",
        "book_car✗",
        "cancel_hotel",
        "(hotel_cancelled)",
        "cancel_flight",
        "(trip_compensated)",
    ]


async def _compensated(app: App, instance: str) -> Any:
    status = await app.workflows.status(instance)
    return status if status.state == "compensated" else None
