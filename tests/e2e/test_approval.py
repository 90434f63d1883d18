"""Human approval gates: request parks the workflow; a decision or the timer resumes it."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import App, Context, Service, WorkerConfig, Workflow
from conveyor.cli import main
from conveyor.model.errors import ApprovalError
from conveyor.testing import FakeClock, running, wait_until

svc = Service("refunds")
gate = svc.approval_gate("manager_approval", timeout=timedelta(hours=24))
outcomes: dict[str, str] = {}


@svc.queue_worker("review_refund")
async def review_refund(ctx: Context, job: dict[str, Any]) -> None:
    await ctx.request_approval("manager_approval", {"amount": job["amount"]})


@svc.subscription("manager_approval_approved", emits=["refund_paid"])
async def pay_refund(ctx: Context, event: dict[str, Any]) -> None:
    outcomes[event["instance_id"]] = "paid"
    await ctx.emit("refund_paid", {})


@svc.subscription("manager_approval_rejected", emits=["refund_denied"])
async def deny_refund(ctx: Context, event: dict[str, Any]) -> None:
    outcomes[event["instance_id"]] = "denied"
    await ctx.emit("refund_denied", {})


@svc.subscription("manager_approval_timed_out", emits=["refund_denied"])
async def escalate(ctx: Context, event: dict[str, Any]) -> None:
    outcomes[event["instance_id"]] = "timed out"
    await ctx.emit("refund_denied", {})


REFUND = Workflow("refund", start="refund_requested", completed=["refund_paid"], failed=["refund_denied"])


@pytest.fixture(autouse=True)
def _fresh_outcomes() -> None:
    outcomes.clear()


def make(backend: str, clock: FakeClock) -> App:
    return App(
        [svc],
        backend=backend,
        clock=clock,
        workflows=[REFUND],
        worker=WorkerConfig(concurrency=4, poll_interval=0.05),
    )


async def _waiting(app: App, instance: str) -> bool:
    status = await app.workflows.status(instance)
    return status.state == "awaiting_approval" and status.pending_approvals == ["manager_approval"]


async def test_approve_and_reject_resume_the_workflow(backend_url: str) -> None:
    clock = FakeClock()
    app = make(backend_url, clock)
    async with app, running(app):
        for instance in ("r-1", "r-2"):
            await app.enqueue("review_refund", {"amount": 50}, correlation_id=instance)
            await wait_until(lambda: _waiting(app, instance))  # noqa: B023
        status = await app.workflows.status("r-1")
        assert status.current == ["approval:manager_approval"]
        await app.workflows.decide("r-1", "manager_approval", approve=True, by="ann")
        await app.workflows.decide("r-2", "manager_approval", approve=False, note="too much")
        await wait_until(lambda: outcomes.get("r-1") == "paid" and outcomes.get("r-2") == "denied")
        with pytest.raises(ApprovalError, match="already approved"):
            await app.workflows.decide("r-1", "manager_approval", approve=False)
        with pytest.raises(ApprovalError, match="no approval request"):
            await app.workflows.decide("nobody", "manager_approval", approve=True)
        await wait_until(lambda: _state(app, "r-1", "completed"))
        await wait_until(lambda: _state(app, "r-2", "failed"))
        for instance in ("r-1", "r-2"):  # each decision cancelled its gate's timer, and its step says so
            timers = [s for s in (await app.workflows.status(instance)).steps if s.queue.endswith(".timeout")]
            assert [s.state for s in timers] == ["cancelled"]
        clock.advance(25 * 3600)  # the cancelled timers never fire
        [stats] = await app.stats(["manager_approval.timeout"])
        assert stats.ready + stats.scheduled + stats.leased == 0
        assert (await app.states.get("approval:r-1:manager_approval"))["by"] == "ann"
    assert outcomes["r-1"] == "paid" and outcomes["r-2"] == "denied"


async def test_the_timer_enforces_the_timeout_path(backend_url: str) -> None:
    clock = FakeClock()
    app = make(backend_url, clock)
    async with app, running(app):
        await app.enqueue("review_refund", {"amount": 900}, correlation_id="r-3")
        await wait_until(lambda: _waiting(app, "r-3"))
        clock.advance(24 * 3600 + 1)
        await wait_until(lambda: outcomes.get("r-3") == "timed out")
        with pytest.raises(ApprovalError, match="already timed_out"):
            await app.workflows.decide("r-3", "manager_approval", approve=True)
        await wait_until(lambda: _state(app, "r-3", "failed"))


async def _state(app: App, instance: str, state: str) -> bool:
    return (await app.workflows.status(instance)).state == state


def test_approve_command_decides_at_the_waiting_gate(tmp_path: Path) -> None:
    db = tmp_path / "approvals.db"
    (tmp_path / "approval_app.py").write_text(
        "from tests.e2e.test_approval import svc, REFUND\n"
        "from conveyor import App\n"
        f"app = App([svc], backend='sqlite:///{db}', workflows=[REFUND])\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import asyncio

        from approval_app import app  # type: ignore[import-not-found]

        async def request() -> None:
            async with app, running(app):
                await app.enqueue("review_refund", {"amount": 5}, correlation_id="r-9")
                await wait_until(lambda: _waiting(app, "r-9"))

        asyncio.run(request())
        result = CliRunner().invoke(main, ["approve", "approval_app:app", "r-9", "--by", "cli"])
        assert result.exit_code == 0, result.output
        assert "r-9: approved at manager_approval" in result.output
        again = CliRunner().invoke(main, ["approve", "approval_app:app", "r-9", "--reject"])
        assert again.exit_code != 0 and "waits at no gate" in again.output
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("approval_app", None)
