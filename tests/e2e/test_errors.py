"""Each error is named after what went wrong: an unknown command is not an unknown queue, a lost
lease is not a state conflict."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import (
    App,
    CommitRejectedError,
    Context,
    LeaseLostError,
    Service,
    StateConflictError,
    UnknownApprovalGateError,
    UnknownCommandError,
    UnknownNameError,
    UnknownQueueError,
)
from conveyor.cli import main
from conveyor.ports import CommitResult, CommitStatus
from conveyor.runtime.committer import not_applied

svc = Service("shop")
svc.approval_gate("manager_approval", timeout=60)


@svc.command("reserve")
async def reserve(ctx: Context, payload: Any) -> str:
    await ctx.states.compare_and_set("stock", 1, version=7)  # the key does not exist: version 0
    return "reserved"


@svc.queue_worker("ship")
async def ship(ctx: Context, job: Any) -> None:
    pass


async def test_an_unknown_command_raises_unknown_command_error_with_suggestions() -> None:
    async with App([svc], backend="memory://") as app:
        with pytest.raises(UnknownCommandError, match="command 'reserv'; did you mean 'reserve'") as caught:
            await app.invoke("reserv")
    assert caught.value.name == "reserv" and caught.value.suggestions == ["reserve"]
    assert isinstance(caught.value, UnknownNameError) and not isinstance(caught.value, UnknownQueueError)


async def test_an_unknown_approval_gate_raises_unknown_approval_gate_error() -> None:
    async with App([svc], backend="memory://") as app:
        with pytest.raises(UnknownApprovalGateError, match="approval gate 'manager_aproval'") as caught:
            await app.workflows.decide("i-1", "manager_aproval", approve=True)
    assert caught.value.suggestions == ["manager_approval"]
    assert not isinstance(caught.value, UnknownQueueError)


def test_an_unknown_queue_is_still_unknown_queue_error() -> None:
    app = App([svc], backend="memory://")
    with pytest.raises(UnknownQueueError, match="did you mean 'ship'") as caught:
        app.registry.queue("shipp")
    assert isinstance(caught.value, UnknownNameError)


def test_the_cli_exits_2_for_an_unknown_approval_gate(tmp_path: Path) -> None:
    source = f"""
        from conveyor import App, Service
        svc = Service("refunds")
        svc.approval_gate("manager_approval", timeout=60)
        app = App([svc], backend="sqlite:///{tmp_path / "gates.db"}")
    """
    name = f"errors_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        result = CliRunner().invoke(main, ["approve", f"{name}:app", "r-1", "--gate", "manager_aproval"])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: UnknownApprovalGateError: no service of this app declares")


async def test_a_command_whose_compare_and_set_loses_raises_state_conflict(backend_url: str) -> None:
    async with App([svc], backend=backend_url) as app:
        with pytest.raises(StateConflictError, match="command 'reserve': a compare_and_set"):
            await app.invoke("reserve")
        assert await app.states.get("stock") is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (CommitStatus.CONFLICT, StateConflictError),
        (CommitStatus.STALE, LeaseLostError),
        (CommitStatus.REJECTED, CommitRejectedError),
    ],
)
def test_a_commit_not_applied_is_named_after_why(status: CommitStatus, error: type[Exception]) -> None:
    # A commit without a settlement (app.enqueue, app.invoke) cannot come back STALE from today's
    # backends, so the mapping they share is checked on the result itself.
    found = not_applied(CommitResult(status, error="too long"), "this write")
    assert type(found) is error, found
    assert not_applied(CommitResult(CommitStatus.OK), "this write") is None
