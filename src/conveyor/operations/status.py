"""Where is workflow instance X, and why: status computed from the history the runtime records."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from conveyor.definitions.approval import ApprovalGate
from conveyor.definitions.workflow import Workflow
from conveyor.model.history import HistoryKind
from conveyor.model.lifecycle import seconds
from conveyor.ports import HistoryEntry
from conveyor.runtime import approval
from conveyor.runtime.runtime import Runtime
from conveyor.runtime.scheduler import SCHEDULE_INSTANCE_PREFIX

__all__ = ["STATES", "State", "Step", "Workflow", "WorkflowPage", "WorkflowStatus", "Workflows", "summarize"]

State = Literal[
    "unknown",
    "running",
    "retrying",
    "scheduled",
    "awaiting_approval",
    "waiting",
    "completed",
    "failed",
    "compensated",
    "timed_out",
]
"""What an instance is doing, folded from its history; each is defined in docs/guide.md."""

STATES: tuple[State, ...] = typing.get_args(State)


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


def _cancel_pending(steps: dict[str, dict[str, Any]], queue: str) -> None:
    """Mark the jobs of ``queue`` still pending in ``steps`` as cancelled (a gate's timer)."""
    for step in steps.values():
        if step["queue"] == queue and step["state"] == "pending":
            step["state"] = "cancelled"


_TERMINAL: tuple[tuple[str, State], ...] = (
    ("compensated", "compensated"),
    ("failed", "failed"),
    ("completed", "completed"),
)
"""A workflow's terminal event sets, by the state each ends an instance in."""


def _detail(entry: HistoryEntry) -> dict[str, Any]:
    if not entry.detail:
        return {}
    try:
        value = orjson.loads(entry.detail)
    except orjson.JSONDecodeError:
        return {"text": entry.detail}
    return value if isinstance(value, dict) else {"text": value}


def _workflow_of(events: list[str], workflows: Iterable[Workflow]) -> Workflow | None:
    """The declared workflow the instance belongs to: the one its first event starts, else one
    whose start or terminal events it emitted (started by an enqueue, or the start not first)."""
    declared = list(workflows)
    found = next((w for w in declared if events and events[0] == w.start), None)
    if found is not None:
        return found
    emitted = set(events)
    return next(
        (
            w
            for w in declared
            if w.start in emitted or emitted & (set(w.completed) | set(w.failed) | set(w.compensated))
        ),
        None,
    )


def _unconsumed(
    history: list[HistoryEntry], steps: dict[str, dict[str, Any]], routes: Mapping[str, Sequence[str]]
) -> bool:
    """Whether an event the instance emitted has a subscription whose job is not in its history
    yet. A delivery has no "enqueued" entry (the backend fans the event out in the commit that
    publishes it), so a queue's deliveries seen are its steps first seen at an attempt's end."""
    expected: dict[str, int] = {}
    for entry in history:
        if entry.kind == HistoryKind.EMITTED:
            for queue in routes.get(entry.name, ()):
                expected[queue] = expected.get(queue, 0) + 1
    if not expected:
        return False
    seen: dict[str, int] = {}
    for step in steps.values():
        if step["enqueued_at"] is None:
            seen[step["queue"]] = seen.get(step["queue"], 0) + 1
    return any(seen.get(queue, 0) < count for queue, count in expected.items())


def summarize(
    instance_id: str,
    history: list[HistoryEntry],
    workflows: Iterable[Workflow],
    now: float,
    routes: Mapping[str, Sequence[str]] | None = None,
) -> WorkflowStatus:
    """Fold an instance's history into its status; the states are defined in docs/guide.md
    ("Workflow states"). ``routes`` (event -> subscribing queues) tells an emitted event that no
    subscription's job has taken up yet."""
    steps: dict[str, dict[str, Any]] = {}
    events: list[str] = []
    compensations: list[str] = []
    gates: dict[str, bool] = {}
    timers: set[str] = set()
    resumed = -1
    """Where the last redrive of a dead-lettered step shows: what was decided before it (a
    terminal event, a compensation) is no longer the instance's state."""
    marks: list[tuple[int, str]] = []  # (position, event) of every emitted event
    compensated_at: list[int] = []
    for position, entry in enumerate(history):
        if entry.kind == HistoryKind.APPROVAL_REQUESTED:
            gates[entry.name] = True
            timers.add(ApprovalGate.timer_queue_of(entry.name))
            continue
        if entry.kind in (HistoryKind.APPROVAL_DECIDED, HistoryKind.APPROVAL_TIMED_OUT):
            gates.pop(entry.name, None)
            if entry.kind == HistoryKind.APPROVAL_DECIDED:  # the decision cancelled the gate's timer
                _cancel_pending(steps, ApprovalGate.timer_queue_of(entry.name))
            continue
        if entry.kind == HistoryKind.EMITTED:
            events.append(entry.name)
            marks.append((position, entry.name))
            continue
        if entry.kind == HistoryKind.COMPENSATED:
            compensations.append(entry.name)
            compensated_at.append(position)
            continue
        if entry.kind == HistoryKind.CANCELLED and entry.name in timers:
            _cancel_pending(steps, entry.name)
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
                "available_at": None,
                "finished_at": None,
                "last_error": None,
                "error_at": -1,
            },
        )
        detail = _detail(entry)
        redriven = entry.kind == HistoryKind.ENQUEUED or entry.kind in _STEP_STATE
        if step["state"] == "dead_lettered" and redriven and entry.kind != HistoryKind.DEAD_LETTERED:
            resumed = position  # redriven: enqueued again, or an attempt of it ended
            step["finished_at"] = None
        if entry.kind == HistoryKind.ENQUEUED:
            if step["enqueued_at"] is None:
                step["enqueued_at"] = entry.at
            step["state"] = "pending"
            due = detail.get("available_at")
            step["available_at"] = due if isinstance(due, int | float) and due > entry.at else None
        elif entry.kind in _STEP_STATE:
            step["attempts"] = max(step["attempts"], entry.attempt or 0)
            step["state"] = _STEP_STATE[entry.kind]
            step["available_at"] = None
            if entry.kind != HistoryKind.RETRIED:
                step["finished_at"] = entry.at
            if "error" in detail:
                step["last_error"], step["error_at"] = str(detail["error"]), position
    for step in steps.values():
        if step["state"] == "pending" and step["available_at"] is not None and step["available_at"] > now:
            step["state"] = "scheduled"
    workflow = _workflow_of(events, workflows)
    current_steps = {k: s for k, s in steps.items() if s["queue"] not in timers}
    open_states = {s["state"] for s in current_steps.values()} & {"pending", "retrying", "scheduled"}
    dead = [s for s in current_steps.values() if s["state"] == "dead_lettered"]
    terminal: State | None = None
    if workflow is not None:
        ends = {event: state for attribute, state in _TERMINAL for event in getattr(workflow, attribute)}
        later = [ends[event] for position, event in marks if position > resumed and event in ends]
        terminal = later[-1] if later else None
    state: State
    if not history:
        state = "unknown"
    elif terminal is not None:
        state = terminal
    elif "pending" in open_states:
        state = "running"
    elif "retrying" in open_states:
        state = "retrying"
    elif gates:
        state = "awaiting_approval"
    elif "scheduled" in open_states:
        state = "scheduled"
    elif _unconsumed(history, steps, routes or {}):
        state = "waiting"
    elif dead:
        state = "compensated" if any(p > resumed for p in compensated_at) else "failed"
    elif workflow is not None:
        state = "waiting"
    else:
        state = "completed"
    started_at = history[0].at if history else None
    if (
        workflow is not None
        and workflow.deadline is not None
        and started_at is not None
        and state not in ("completed", "failed", "compensated")
        and now - started_at > seconds(workflow.deadline)
    ):
        state = "timed_out"
    # the instance's error is a current one: a step's that succeeded since is history (its Step keeps it)
    failing = [s for s in current_steps.values() if s["state"] in ("retrying", "dead_lettered")]
    last_error = max(failing, key=lambda s: s["error_at"])["last_error"] if failing else None
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
        current=sorted({s["queue"] for s in current_steps.values() if s["state"] in open_states})
        + [f"approval:{gate}" for gate in gates],
        compensations=compensations,
        last_error=last_error,
        history=history,
        pending_approvals=list(gates),
    )


def is_schedule_tick(instance_id: str) -> bool:
    """Whether ``instance_id`` names a schedule tick's instance (``schedule:<name>:<iso tick>``)."""
    return instance_id.startswith(SCHEDULE_INSTANCE_PREFIX)


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
        self._routes: dict[str, list[str]] = {}
        for route in runtime.registry.routes:
            self._routes.setdefault(route.event, []).append(route.queue)

    def _summarize(self, instance_id: str, history: list[HistoryEntry], now: float) -> WorkflowStatus:
        return summarize(instance_id, history, self.declared, now, self._routes)

    def declare(self, *workflows: Workflow) -> None:
        self.declared.extend(workflows)

    async def history(self, instance_id: str) -> list[HistoryEntry]:
        return await self._runtime.backend.history(instance_id)

    async def status(self, instance_id: str) -> WorkflowStatus:
        history = await self._runtime.backend.history(instance_id)
        return self._summarize(instance_id, history, self._runtime.clock.now())

    async def list(
        self,
        *,
        workflow: str | None = None,
        state: State | None = None,
        since: float | None = None,
        limit: int = 50,
        scan: int = 1000,
        schedules: bool = False,
    ) -> list[WorkflowStatus]:
        """Instances started after ``since`` (a timestamp), newest first, filtered by workflow name
        and state. Looks at the ``scan`` most recent instances at most (status is folded from each
        instance's history, so filters are applied here, not in the store). Schedule ticks'
        instances (``schedule:<name>:<tick>``) are left out unless ``schedules`` is true.
        """
        found: list[WorkflowStatus] = []
        for summary in await self._runtime.backend.instances(since, scan):
            if not schedules and is_schedule_tick(summary.correlation_id):
                continue
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
        schedules: bool = False,
    ) -> WorkflowPage:
        """Instances newest-started first, keyset-paged: the next page is ``before=page.next``.

        ``since``/``until`` bound the start time (at or after, before); ``prefix`` the correlation
        id; ``state``, ``workflow``, ``step`` (a queue it has a job open on) and ``dead_letters``
        (whether a step was dead-lettered) are checked on each instance's status, folded from its
        history, so a page looks at ``scan`` instances at most: with rare matches it may hold fewer
        than ``limit`` and still have a ``next`` to go on from. Schedule ticks' instances are left
        out (without reading their history, though they count as looked at) unless ``schedules``
        is true or ``prefix`` asks for them (``schedule:...``).
        """
        schedules = schedules or (prefix is not None and is_schedule_tick(prefix))
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
                if not schedules and is_schedule_tick(summary.correlation_id):
                    continue
                history = await backend.history(summary.correlation_id)
                status = self._summarize(summary.correlation_id, history, now)
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
