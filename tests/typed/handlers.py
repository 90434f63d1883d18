"""Handlers as the guide writes them; ``scripts/check`` runs ``mypy --strict`` on this file."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from conveyor import Context, JobInfo, ScheduleTick, Service

svc = Service("typed")


class Order(BaseModel):
    order_id: str


@svc.queue_worker("charge", payload=Order, enqueues=["notify"])
async def charge(ctx: Context, job: Order) -> None:
    attempt: int = ctx.job.attempt  # JobInfo, not JobInfo | None: no narrowing needed
    info: JobInfo = ctx.job
    if attempt < info.max_attempts:
        await ctx.enqueue("notify", {"order_id": job.order_id, "attempt": attempt})


@svc.queue_worker("notify")
async def notify(ctx: Context, job: dict[str, object]) -> None:
    ctx.logger.info("job %s of %s", ctx.job.id, ctx.job.queue)


@svc.schedule("nightly", cron="0 2 * * *")
async def nightly(ctx: Context, tick: ScheduleTick) -> None:
    at: datetime = tick.at
    await ctx.states.set(f"report:{tick.schedule}", at.isoformat())


@charge.on_dead_letter(emits=["charge_failed"])
async def charge_failed(ctx: Context, job: Order | None, error: BaseException) -> None:
    await ctx.emit("charge_failed", {"attempts": ctx.job.attempt, "error": str(error)})
