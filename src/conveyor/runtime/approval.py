"""Approval gates at run time: the request, the timer that times it out, and the decision.

The gate's declaration is data (:class:`~conveyor.definitions.approval.ApprovalGate`). A handler asks
with ``ctx.request_approval`` (:func:`request`), which buffers the request, the gate's timer job and
the ``<gate>_requested`` event in its job's commit. Whichever of :func:`decide` and
:func:`fire_timeout` comes first wins: both move the gate's state by compare-and-set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from conveyor.definitions.approval import ApprovalGate
from conveyor.model.errors import ApprovalError, ConfigurationError
from conveyor.model.history import HistoryKind
from conveyor.model.lifecycle import Seconds, seconds
from conveyor.ports import Commit, CommitStatus, Effects, HistoryEntry, StateOp, StateWrite
from conveyor.runtime.buffer import EffectsBuffer
from conveyor.runtime.committer import rejection
from conveyor.runtime.messages import Origin, jsonable
from conveyor.runtime.runtime import Runtime
from conveyor.runtime.states import States, encode_state


class HandlerContext(Protocol):
    """What a gate uses of a handler's ``ctx`` (:class:`~conveyor.runtime.context.Context`, which
    calls :func:`request` and so is not imported here)."""

    @property
    def runtime(self) -> Runtime: ...
    @property
    def buffer(self) -> EffectsBuffer: ...
    @property
    def states(self) -> States: ...
    @property
    def correlation_id(self) -> str | None: ...

    def history(
        self, kind: HistoryKind, name: str, *, message_id: str | None = None, detail: str | None = None
    ) -> None: ...

    async def emit(self, event: str, payload: Any = None, *, correlation_id: str | None = None) -> str: ...

    def _enqueue(self, queue: str, payload: Any, delay: Seconds | None, idempotency_key: str | None) -> str:
        """Enqueue a job of the runtime's own (the gate's timer), which no handler declares."""
        ...


async def request(
    ctx: HandlerContext,
    gate: str,
    payload: Any,
    timeout: Seconds | None,
    *,
    emit: Callable[[str, Any], object],
) -> None:
    """``ctx.request_approval``: the pending request (a state only this instance's first request
    may create), the timer job and the ``<gate>_requested`` event (through ``emit``, which does not
    ask the handler's ``emits=``: the gate declares it), all in the job's commit."""
    ctx.buffer.check_open()
    runtime = ctx.runtime
    declared = runtime.registry.gate(gate)
    instance_id = ctx.correlation_id
    if instance_id is None:
        raise ConfigurationError(
            "request_approval needs a workflow instance (a message with a correlation id)"
        )
    now = runtime.clock.now()
    limit = declared.timeout if timeout is None else seconds(timeout)
    key = ApprovalGate.state_key(instance_id, gate)
    data = jsonable(payload, None, f"approval gate {gate!r}")
    pending = {
        "status": "pending",
        "gate": gate,
        "requested_at": now,
        "deadline": now + limit,
        "payload": data,
    }
    ctx.buffer.effects.states.append(StateWrite(key, StateOp.SET, encode_state(pending), expected_version=0))
    ctx._enqueue(declared.timer_queue, {"instance_id": instance_id, "gate": gate}, limit, key)
    ctx.history(HistoryKind.APPROVAL_REQUESTED, gate, detail=orjson.dumps({"deadline": now + limit}).decode())
    emit(declared.event("requested"), {"instance_id": instance_id, "gate": gate, "payload": data})


async def fire_timeout(ctx: HandlerContext, job: dict[str, Any]) -> None:
    """The gate's timer (the handler of every gate's ``<gate>.timeout`` queue): if the request is
    still pending, it times out."""
    instance_id, gate = str(job["instance_id"]), str(job["gate"])
    key = ApprovalGate.state_key(instance_id, gate)
    value, version = await ctx.states.get_versioned(key)
    if not value or value.get("status") != "pending":
        return  # decided in time: the timer was late to be cancelled
    runtime = ctx.runtime
    now = runtime.clock.now()
    await ctx.states.compare_and_set(key, {**value, "status": "timed_out", "decided_at": now}, version)
    ctx.history(HistoryKind.APPROVAL_TIMED_OUT, gate)
    await ctx.emit(
        runtime.registry.gate(gate).event("timed_out"),
        {"instance_id": instance_id, "gate": gate, "payload": value.get("payload")},
    )


async def decide(
    runtime: Runtime,
    instance_id: str,
    gate: str,
    *,
    approve: bool,
    note: str | None = None,
    by: str | None = None,
) -> str:
    """Approve or reject ``instance_id`` at ``gate``: emits ``<gate>_approved``/``_rejected`` to
    the instance and cancels the gate's timer, atomically. Returns the event's id.

    Raises :class:`~conveyor.model.errors.ApprovalError` if nothing is pending there.
    """
    declared = runtime.registry.gate(gate)
    key = ApprovalGate.state_key(instance_id, gate)
    request, version = await States(runtime).get_versioned(key)
    if request is None:
        raise ApprovalError(f"workflow {instance_id!r} has no approval request at gate {gate!r}")
    if request.get("status") != "pending":
        raise ApprovalError(f"workflow {instance_id!r} at gate {gate!r} is already {request.get('status')}")
    now = runtime.clock.now()
    outcome = "approved" if approve else "rejected"
    decision = {"outcome": outcome, "by": by, "note": note}
    effects = Effects(
        states=[
            StateWrite(
                key,
                StateOp.SET,
                encode_state({**request, "status": outcome, "decided_at": now, "by": by, "note": note}),
                expected_version=version,
            )
        ],
        cancels=[(declared.timer_queue, key)],
        history=[
            HistoryEntry(
                instance_id,
                now,
                HistoryKind.APPROVAL_DECIDED,
                gate,
                detail=orjson.dumps(decision).decode(),
            )
        ],
    )
    event = runtime.messages.add_event(
        effects,
        declared.event(outcome),
        {
            "instance_id": instance_id,
            "gate": gate,
            "payload": request.get("payload"),
            "by": by,
            "note": note,
        },
        message_id=None,
        origin=Origin(),
        now=now,
        correlation_id=instance_id,
    )
    [result] = await runtime.backend.commit([Commit(effects=effects)], now)
    if result.status is CommitStatus.REJECTED:  # not a race: the backend cannot store it
        raise rejection(result)
    if result.status is not CommitStatus.OK:
        raise ApprovalError(f"workflow {instance_id!r} at gate {gate!r} was decided or timed out meanwhile")
    return event.id
