"""Human approval gates: a step asks, the workflow parks, a decision or a timer resumes it.

``gate = service.approval_gate("manager_approval", timeout=timedelta(hours=24))`` declares the
gate and its events ``manager_approval_requested`` / ``_approved`` / ``_rejected`` / ``_timed_out``.
A handler calls ``await ctx.request_approval("manager_approval", {...})``; the request, a delayed
timer job and the ``_requested`` event commit with that handler's job. The instance then waits until
``app.workflows.decide(...)`` (or ``conveyor approve``) emits ``_approved``/``_rejected``, or the
timer emits ``_timed_out``. Whichever comes first wins: the gate's state moves by compare-and-set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.model.errors import ConveyorError
from conveyor.model.history import HistoryKind

if TYPE_CHECKING:
    from conveyor.runtime.context import Context

OUTCOMES = ("requested", "approved", "rejected", "timed_out")


class ApprovalError(ConveyorError):
    """A decision that cannot be taken: nothing requested, or already decided or timed out."""


@dataclass(frozen=True)
class ApprovalGate:
    """A declared gate. ``events`` are the four events it emits."""

    name: str
    timeout: float
    description: str = ""

    @property
    def timer_queue(self) -> str:
        return f"{self.name}.timeout"

    def event(self, outcome: str) -> str:
        return f"{self.name}_{outcome}"

    @property
    def events(self) -> frozenset[str]:
        return frozenset(self.event(outcome) for outcome in OUTCOMES)

    @staticmethod
    def state_key(instance_id: str, gate: str) -> str:
        return f"approval:{instance_id}:{gate}"


async def fire_timeout(ctx: Context, job: dict[str, Any]) -> None:
    """The gate's timer: if the request is still pending, it times out."""
    instance_id, gate = str(job["instance_id"]), str(job["gate"])
    key = ApprovalGate.state_key(instance_id, gate)
    value, version = await ctx.states.get_versioned(key)
    if not value or value.get("status") != "pending":
        return  # decided in time: the timer was late to be cancelled
    now = ctx.runtime.clock.now()
    await ctx.states.compare_and_set(key, {**value, "status": "timed_out", "decided_at": now}, version)
    ctx.history(HistoryKind.APPROVAL_TIMED_OUT, gate)
    await ctx.emit(
        f"{gate}_timed_out", {"instance_id": instance_id, "gate": gate, "payload": value.get("payload")}
    )
