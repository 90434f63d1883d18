"""Where is workflow instance X, and why: status computed from the history the runtime records."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from conveyor.definitions.workflow import Workflow
from conveyor.model.history import HistoryKind
from conveyor.model.lifecycle import seconds
from conveyor.ports import HistoryEntry
from conveyor.runtime import approval
from conveyor.runtime.runtime import Runtime

__all__ = ["State", "Step", "Workflow", "WorkflowPage", "WorkflowStatus", "Workflows", "summarize"]

State = Literal["unknown", "running", "waiting", "completed", "failed", "compensated", "timed_out"]


@dataclass(frozen=True)
class Step:
    """One job of the instance: a queue it went through, with attempts and timing."""

    queue: str
    job_id: str
    state: Literal["pending", "scheduled", "succeeded", "retrying", "dead_lettered"]
    attempts: int
    enqueued_at: float | None
    finished_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class WorkflowStatus:
    id: str
    state: State
    workflow: str | None
    started_at: float | None
    updated_at: float | None
    steps: list[Step]
    events: list[str]
    """Events emitted by the instance, in order."""
    current: list[str]
    """Queues with a job not finished yet."""
    compensations: list[str]
    last_error: str | None
    history: list[HistoryEntry] = field(repr=False, default_factory=list)
    pending_approvals: list[str] = field(default_factory=list)
    """Approval gates the instance waits at."""

    @property
    def path(self) -> list[str]:
        """Steps and events in the order they happened: the path the instance took."""
        path: list[str] = []
        for entry in self.history:
            if entry.kind == HistoryKind.SUCCEEDED:
                path.append(entry.name)
            elif entry.kind == HistoryKind.EMITTED:
                path.append(f"({entry.name})")
            elif entry.kind == HistoryKind.DEAD_LETTERED:
                path.append(f"{entry.name}✗")
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "workflow": self.workflow,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "current": self.current,
            "events": self.events,
            "compensations": self.compensations,
            "last_error": self.last_error,
            "pending_approvals": self.pending_approvals,
            "path": self.path,
            "steps": [dataclasses.asdict(step) for step in self.steps],
            "history": [dataclasses.asdict(entry) for entry in self.history],
        }


_STEP_STATE: dict[str, str] = {
    HistoryKind.SUCCEEDED: "succeeded",
    HistoryKind.RETRIED: "retrying",
    HistoryKind.DEAD_LETTERED: "dead_lettered",
}
"""A step's state after an attempt's entry. Keyed by str: kinds are read back as the stored text,
which a member equals and hashes as."""


def _detail(entry: HistoryEntry) -> dict[str, Any]:
    if not entry.detail:
        return {}
    try:
        value = orjson.loads(entry.detail)
    except orjson.JSONDecodeError:
        return {"text": entry.detail}
    return value if isinstance(value, dict) else {"text": value}


def summarize(
    instance_id: str, history: list[HistoryEntry], workflows: Iterable[Workflow], now: float
) -> WorkflowStatus:
    """Fold an instance's history into its status."""
    steps: dict[str, dict[str, Any]] = {}
    events: list[str] = []
    compensations: list[str] = []
    last_error: str | None = None
    gates: dict[str, bool] = {}
    for entry in history:
        if entry.kind == HistoryKind.APPROVAL_REQUESTED:
            gates[entry.name] = True
            continue
        if entry.kind in (HistoryKind.APPROVAL_DECIDED, HistoryKind.APPROVAL_TIMED_OUT):
            gates.pop(entry.name, None)
            continue
        if entry.kind == HistoryKind.EMITTED:
            events.append(entry.name)
            continue
        if entry.kind == HistoryKind.COMPENSATED:
            compensations.append(entry.name)
            continue
        if entry.message_id is None or entry.kind in (HistoryKind.STATE_CHANGED, HistoryKind.CANCELLED):
            continue
        step = steps.setdefault(
            entry.message_id,
            {
                "queue": entry.name,
                "state": "pending",
                "attempts": 0,
                "enqueued_at": None,
                "finished_at": None,
                "last_error": None,
            },
        )
        detail = _detail(entry)
        if entry.kind == HistoryKind.ENQUEUED:
            step["enqueued_at"] = entry.at
            if detail.get("available_at", 0) > entry.at:
                step["state"] = "scheduled"
        elif entry.kind in _STEP_STATE:
            step["attempts"] = max(step["attempts"], entry.attempt or 0)
            step["state"] = _STEP_STATE[entry.kind]
            if entry.kind != HistoryKind.RETRIED:
                step["finished_at"] = entry.at
            if "error" in detail:
                step["last_error"] = last_error = str(detail["error"])
    workflow = next((w for w in workflows if events and events[0] == w.start), None)
    if workflow is None:  # started by an enqueue, or the start event is not the first
        emitted_set = set(events)
        workflow = next(
            (
                w
                for w in workflows
                if w.start in emitted_set
                or emitted_set & (set(w.completed) | set(w.failed) | set(w.compensated))
            ),
            None,
        )
    open_steps = [s for s in steps.values() if s["state"] in ("pending", "scheduled", "retrying")]
    state: State
    emitted = set(events)
    if not history:
        state = "unknown"
    elif workflow is not None and emitted & set(workflow.compensated):
        state = "compensated"
    elif workflow is not None and emitted & set(workflow.failed):
        state = "failed"
    elif workflow is not None and emitted & set(workflow.completed):
        state = "completed"
    elif open_steps and any(s["state"] == "pending" for s in open_steps):
        state = "running"
    elif open_steps or gates:
        state = "waiting"
    elif any(s["state"] == "dead_lettered" for s in steps.values()):
        state = "compensated" if compensations else "failed"
    elif workflow is not None:
        state = "waiting"
    else:
        state = "completed"
    started_at = history[0].at if history else None
    if (
        workflow is not None
        and workflow.deadline is not None
        and started_at is not None
        and state in ("running", "waiting")
        and now - started_at > seconds(workflow.deadline)
    ):
        state = "timed_out"
    return WorkflowStatus(
        id=instance_id,
        state=state,
        workflow=workflow.name if workflow else None,
        started_at=started_at,
        updated_at=history[-1].at if history else None,
        steps=[
            Step(
                s["queue"],
                job_id,
                s["state"],
                s["attempts"],
                s["enqueued_at"],
                s["finished_at"],
                s["last_error"],
            )
            for job_id, s in steps.items()
        ],
        events=events,
        current=sorted({s["queue"] for s in open_steps if not s["queue"].endswith(".timeout")})
        + [f"approval:{gate}" for gate in gates],
        compensations=compensations,
        last_error=last_error,
        history=history,
        pending_approvals=list(gates),
    )


PAGE_SCAN = 500
"""Instances :meth:`Workflows.page` looks at for one page at most."""


@dataclass(frozen=True)
class WorkflowPage:
    items: list[WorkflowStatus]
    next: tuple[float, str] | None
    """Where the next page starts (``page(before=next)``); None: there is nothing older."""
    scanned: int
    """Instances looked at."""


def since_exclusive(since: float | None) -> float | None:
    """``instances`` leaves out starts *at or before* its bound; ``since`` keeps those at it."""
    return None if since is None else math.nextafter(since, -math.inf)


def _filtered(state: State | None, workflow: str | None, step: str | None, dead: bool | None) -> bool:
    return state is not None or workflow is not None or step is not None or dead is not None


def _matches(
    status: WorkflowStatus, state: State | None, workflow: str | None, step: str | None, dead: bool | None
) -> bool:
    if state is not None and status.state != state:
        return False
    if workflow is not None and status.workflow != workflow:
        return False
    if step is not None and step not in status.current:
        return False
    has_dead = any(s.state == "dead_lettered" for s in status.steps)
    return dead is None or has_dead == dead


class Workflows:
    """``app.workflows``: status and history of workflow instances (by correlation id)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.declared: list[Workflow] = []

    def declare(self, *workflows: Workflow) -> None:
        self.declared.extend(workflows)

    async def history(self, instance_id: str) -> list[HistoryEntry]:
        return await self._runtime.backend.history(instance_id)

    async def status(self, instance_id: str) -> WorkflowStatus:
        history = await self._runtime.backend.history(instance_id)
        return summarize(instance_id, history, self.declared, self._runtime.clock.now())

    async def list(
        self,
        *,
        workflow: str | None = None,
        state: State | None = None,
        since: float | None = None,
        limit: int = 50,
        scan: int = 1000,
    ) -> list[WorkflowStatus]:
        """Instances started after ``since`` (a timestamp), newest first, filtered by workflow name
        and state. Looks at the ``scan`` most recent instances at most (status is folded from each
        instance's history, so filters are applied here, not in the store).
        """
        found: list[WorkflowStatus] = []
        for summary in await self._runtime.backend.instances(since, scan):
            status = await self.status(summary.correlation_id)
            if (workflow is None or status.workflow == workflow) and (state is None or status.state == state):
                found.append(status)
                if len(found) >= limit:
                    break
        return found

    async def page(
        self,
        *,
        limit: int = 50,
        before: tuple[float, str] | None = None,
        state: State | None = None,
        workflow: str | None = None,
        since: float | None = None,
        until: float | None = None,
        prefix: str | None = None,
        step: str | None = None,
        dead_letters: bool | None = None,
        scan: int = PAGE_SCAN,
    ) -> WorkflowPage:
        """Instances newest-started first, keyset-paged: the next page is ``before=page.next``.

        ``since``/``until`` bound the start time (at or after, before); ``prefix`` the correlation
        id; ``state``, ``workflow``, ``step`` (a queue it has a job open on) and ``dead_letters``
        (whether a step was dead-lettered) are checked on each instance's status, folded from its
        history, so a page looks at ``scan`` instances at most: with rare matches it may hold fewer
        than ``limit`` and still have a ``next`` to go on from.
        """
        if until is not None and (before is None or (until, "") < before):
            before = (until, "")
        items: list[WorkflowStatus] = []
        scanned = 0
        cursor = before
        backend, now = self._runtime.backend, self._runtime.clock.now()
        while len(items) < limit and scanned < scan:
            batch = min(
                scan - scanned,
                max(limit - len(items), 1) * (4 if _filtered(state, workflow, step, dead_letters) else 1),
            )
            found = await backend.instances(since_exclusive(since), batch, before=cursor, prefix=prefix)
            if not found:
                return WorkflowPage(items, None, scanned)
            for summary in found:
                scanned += 1
                cursor = (summary.started_at, summary.correlation_id)
                history = await backend.history(summary.correlation_id)
                status = summarize(summary.correlation_id, history, self.declared, now)
                if _matches(status, state, workflow, step, dead_letters):
                    items.append(status)
                    if len(items) >= limit:
                        break
            if len(found) < batch:
                return WorkflowPage(items, None, scanned)
        return WorkflowPage(items, cursor, scanned)

    async def decide(
        self, instance_id: str, gate: str, *, approve: bool, note: str | None = None, by: str | None = None
    ) -> str:
        """Approve or reject ``instance_id`` at ``gate``: emits ``<gate>_approved``/``_rejected`` to
        the instance and cancels the gate's timer, atomically. Returns the event's id.

        Raises :class:`~conveyor.model.errors.ApprovalError` if nothing is pending there.
        """
        return await approval.decide(self._runtime, instance_id, gate, approve=approve, note=note, by=by)
