"""The saga shape: each step names its compensating queue; on failure, undo in reverse order.

``@service.queue_worker("charge_card", compensate="refund_card")``: when ``charge_card`` succeeds,
its payload is kept in the workflow's history. When a later job of the same workflow instance is
dead-lettered, the runtime enqueues the compensations of the completed steps, newest first, one
after the other: each compensation job carries the rest of the chain and enqueues the next one when
it commits. Compensations are ordinary jobs (retries, dead letters, their own events), so nothing is
hidden; a compensation that is dead-lettered stops the chain, visible in the workflow's status.
"""

from __future__ import annotations

from typing import Any

import orjson

from conveyor.definitions.service import QueueWorker
from conveyor.model.envelope import Envelope
from conveyor.model.errors import PayloadValidationError
from conveyor.model.history import HistoryKind
from conveyor.ports import Effects, HistoryEntry
from conveyor.runtime.messages import Origin, child_id
from conveyor.runtime.runtime import Runtime

SAGA_STEP = "compensable"


def completed_step(definition: QueueWorker[Any], envelope: Envelope) -> dict[str, Any] | None:
    """What to remember of a compensable step that succeeded (goes into its history entry)."""
    if definition.compensate is None:
        return None
    try:  # encoded here, so that a payload JSON cannot hold says so in its own words
        payload = orjson.Fragment(orjson.dumps(envelope.payload))
    except orjson.JSONEncodeError as exc:
        raise PayloadValidationError(
            f"payload of compensable step {definition.name!r} cannot be kept for its compensation: {exc}"
        ) from None
    return {"compensate": definition.compensate, "payload": payload}


def _queue(runtime: Runtime, envelope: Envelope, chain: list[dict[str, Any]], effects: Effects) -> None:
    first, rest = chain[0], chain[1:]
    now = runtime.clock.now()
    runtime.messages.add_job(
        effects,
        first["queue"],
        first["payload"],
        message_id=child_id(envelope.id, 1_000_000),  # distinct from the handler's own effects
        origin=Origin(envelope, envelope.service, envelope.service_version),
        now=now,
        correlation_id=envelope.correlation_id,
        saga=rest,
    )


async def start(runtime: Runtime, envelope: Envelope, effects: Effects) -> None:
    """A job of ``envelope``'s workflow was dead-lettered: compensate its completed steps."""
    if envelope.saga is not None:
        return  # a compensation failed: the chain stops here, it is not compensated in turn
    history = await runtime.backend.history(envelope.correlation_id)
    steps: list[dict[str, Any]] = []
    for entry in history:
        if entry.kind == HistoryKind.SUCCEEDED and entry.detail and SAGA_STEP in entry.detail:
            detail = orjson.loads(entry.detail)
            step = detail.get(SAGA_STEP)
            if step:
                steps.append({"queue": step["compensate"], "payload": step["payload"], "step": entry.name})
        elif entry.kind == HistoryKind.COMPENSATION_STARTED:
            return  # another failure of this instance already started the compensation
    if not steps:
        return
    chain = list(reversed(steps))
    _queue(runtime, envelope, chain, effects)
    effects.history.append(
        HistoryEntry(
            envelope.correlation_id,
            runtime.clock.now(),
            HistoryKind.COMPENSATION_STARTED,
            envelope.name,
            envelope.id,
            None,
            orjson.dumps({"undo": [s["step"] for s in chain]}).decode(),
        )
    )


def advance(runtime: Runtime, envelope: Envelope, effects: Effects) -> None:
    """A compensation job succeeded: record it and enqueue the next one of the chain."""
    if envelope.saga is None:
        return
    if runtime.history_enabled:
        effects.history.append(
            HistoryEntry(
                envelope.correlation_id,
                runtime.clock.now(),
                HistoryKind.COMPENSATED,
                envelope.name,
                envelope.id,
            )
        )
    if envelope.saga:
        _queue(runtime, envelope, envelope.saga, effects)
