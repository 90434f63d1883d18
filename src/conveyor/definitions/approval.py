"""Human approval gates: a step asks, the workflow parks, a decision or a timer resumes it.

``gate = service.approval_gate("manager_approval", timeout=timedelta(hours=24))`` declares the
gate and its events ``manager_approval_requested`` / ``_approved`` / ``_rejected`` / ``_timed_out``.
A handler calls ``await ctx.request_approval("manager_approval", {...})``; the request, a delayed
timer job and the ``_requested`` event commit with that handler's job. The instance then waits until
``app.workflows.decide(...)`` (or ``conveyor approve``) emits ``_approved``/``_rejected``, or the
timer emits ``_timed_out``. Whichever comes first wins: the gate's state moves by compare-and-set.

The declaration only, as data; the request, the timer and the decision are in
:mod:`conveyor.runtime.approval`.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTCOMES = ("requested", "approved", "rejected", "timed_out")


@dataclass(frozen=True)
class ApprovalGate:
    """A declared gate. ``events`` are the four events it emits."""

    name: str
    timeout: float
    description: str = ""

    @property
    def timer_queue(self) -> str:
        return self.timer_queue_of(self.name)

    @staticmethod
    def timer_queue_of(gate: str) -> str:
        """The queue of gate ``gate``'s timeout timers."""
        return f"{gate}.timeout"

    def event(self, outcome: str) -> str:
        return f"{self.name}_{outcome}"

    @property
    def events(self) -> frozenset[str]:
        return frozenset(self.event(outcome) for outcome in OUTCOMES)

    @staticmethod
    def state_key(instance_id: str, gate: str) -> str:
        return f"approval:{instance_id}:{gate}"
