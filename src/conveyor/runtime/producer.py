"""Producing jobs and events: what ``ctx.enqueue``/``ctx.emit`` and ``app.enqueue``/``app.emit`` do.

Wherever a job is produced, the same steps make it: the queue's declaration is looked up (an
unknown queue is refused), the payload is checked against its model and for what JSON cannot carry,
and the message is built into :class:`~conveyor.ports.Effects` (:func:`add_job`, :func:`add_event`).
Where the effects go is the caller's: a handler's join its job's commit; the app's commit here, at
once (:func:`enqueue_many`, :func:`emit`), or inside the caller's own transaction (``connection=``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from conveyor.model.errors import (
    ConfigurationError,
    ConveyorError,
    EnqueueIncompleteError,
    StateConflictError,
)
from conveyor.model.lifecycle import DEFAULT_OPTIONS, JobOptions, Seconds
from conveyor.observability.metrics import QUEUE
from conveyor.ports import (
    Commit,
    CommitResult,
    Effects,
    NewEvent,
    NewJob,
    StateOp,
    StateWrite,
    TransactionalOutbox,
)
from conveyor.runtime.committer import not_applied
from conveyor.runtime.messages import Origin, available_at, check_names, jsonable, jsonable_many
from conveyor.runtime.runtime import Runtime

logger = logging.getLogger("conveyor")

ENQUEUE_BATCH = 250
"""Jobs per commit in :func:`enqueue_many`. Small enough that the next batch is encoded while the
backend stores the previous one; big enough that a round trip carries plenty of jobs."""
ENQUEUE_IN_FLIGHT = 4
"""Batches of one :func:`enqueue_many` call being stored at once."""


def payload_model(runtime: Runtime, queue: str, *, external: bool = False) -> type[BaseModel] | None:
    """The model a job for ``queue`` is checked against (None: any JSON); raises
    :class:`~conveyor.model.errors.UnknownQueueError` for a queue this app does not know."""
    definition = runtime.registry.destination(queue, external=external)
    return definition.payload if definition is not None else None


def add_job(
    runtime: Runtime,
    effects: Effects,
    queue: str,
    payload: Any,
    message_id: str | None,
    origin: Origin,
    delay: Seconds | None,
    run_at: datetime | float | None,
    idempotency_key: str | None,
    correlation_id: str | None,
    options: JobOptions = DEFAULT_OPTIONS,
    /,
) -> NewJob:
    """Check one job for ``queue`` and build it into ``effects``; returns it. (Positional: a
    handler's every enqueue comes through here, and a call by keyword costs more.)"""
    now = runtime.clock.now()
    definition = runtime.registry.destination(queue)  # not payload_model(): a call less a job
    data = jsonable(payload, definition.payload if definition else None, f"queue {queue!r}")
    return runtime.messages.add_job(
        effects,
        queue,
        data,
        message_id=message_id,
        origin=origin,
        now=now,
        available_at=None if delay is None and run_at is None else available_at(now, delay, run_at),
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
        options=options,
    )


def add_event(
    runtime: Runtime,
    effects: Effects,
    event: str,
    payload: Any,
    *,
    message_id: str | None,
    origin: Origin,
    correlation_id: str | None,
) -> NewEvent:
    """Check event ``event`` and build it into ``effects``; returns it."""
    return runtime.messages.add_event(
        effects,
        event,
        jsonable(payload, None, f"event {event!r}"),
        message_id=message_id,
        origin=origin,
        now=runtime.clock.now(),
        correlation_id=correlation_id,
    )


async def enqueue_many(
    runtime: Runtime,
    queue: str,
    payloads: Iterable[Any],
    idempotency_keys: Sequence[str | None] | None,
    *,
    now: float,
    when: float | None,
    correlation_id: str | None,
    connection: Any,
    external: bool,
    options: JobOptions = DEFAULT_OPTIONS,
) -> list[str]:
    """Check every job (available at ``when``; None: ``now``), then store them in batches of
    :data:`ENQUEUE_BATCH`, up to :data:`ENQUEUE_IN_FLIGHT` on the way at once (see
    :meth:`conveyor.App.enqueue_many`)."""
    data = jsonable_many(list(payloads), payload_model(runtime, queue, external=external), f"queue {queue!r}")
    keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(data)
    if len(keys) != len(data):
        raise ConfigurationError("idempotency_keys must have one entry per payload")
    check_names("queue name", queue, correlation_id, keys)  # all of them before any batch is stored
    ids: list[str] = []
    with runtime.tracer.produce("enqueue", queue):
        origin = Origin(trace=runtime.tracer.inject())
        batches: list[asyncio.Future[CommitResult]] = []
        failure: Exception | None = None
        try:
            for start in range(0, len(data), ENQUEUE_BATCH):
                effects = Effects()
                runtime.messages.add_jobs(
                    effects,
                    queue,
                    data[start : start + ENQUEUE_BATCH],
                    idempotency_keys=keys[start : start + ENQUEUE_BATCH],
                    origin=origin,
                    now=now,
                    available_at=when,
                    correlation_id=correlation_id,
                    options=options,
                )
                if connection is not None:
                    ids.extend((await commit(runtime, effects, connection)).job_ids)
                    continue
                on_the_way = [batch for batch in batches if not batch.done()]
                if len(on_the_way) >= ENQUEUE_IN_FLIGHT:
                    await asyncio.wait(on_the_way, return_when=asyncio.FIRST_COMPLETED)
                batches.append(asyncio.ensure_future(commit(runtime, effects)))
                await asyncio.sleep(0)  # let the batch go out while the next one is encoded
        except Exception as exc:
            failure = exc
        results = await asyncio.gather(*batches, return_exceptions=True)
        for result in results:
            if isinstance(result, CommitResult):
                ids.extend(result.job_ids)
            elif failure is None:
                failure = result if isinstance(result, Exception) else ConveyorError(repr(result))
        if failure is not None:
            if not ids or connection is not None:  # in the caller's transaction: none will commit
                raise failure
            raise EnqueueIncompleteError(
                f"enqueue_many on {queue!r} failed after storing {len(ids)} of {len(data)} jobs: "
                f"{type(failure).__name__}: {failure}",
                ids,
            ) from failure
    if runtime.metrics.enabled:
        runtime.metrics.enqueued.add(len(ids), {QUEUE: queue})
    return ids


async def emit(
    runtime: Runtime,
    event: str,
    payload: Any,
    *,
    correlation_id: str | None,
    connection: Any,
    idempotency_key: str | None = None,
) -> tuple[str, bool]:
    """Publish ``event`` at once (see :meth:`conveyor.App.emit`): its id, and False when
    ``idempotency_key`` had been used already (the id is then the first emit's, and nothing is
    published). The key is held in the state store, written in the same commit as the event."""
    with runtime.tracer.produce("emit", event):
        effects = Effects()
        new = add_event(
            runtime,
            effects,
            event,
            payload,
            message_id=None,
            origin=Origin(trace=runtime.tracer.inject()),
            correlation_id=correlation_id,
        )
        if idempotency_key is not None:
            check_names("event", event, correlation_id, [idempotency_key])
            key = emit_key(event, idempotency_key)
            effects.states.append(StateWrite(key, StateOp.SET, orjson.dumps(new.id), expected_version=0))
            try:
                result = await commit(runtime, effects, connection, what=f"event {event!r}")
            except StateConflictError:
                stored = (await runtime.backend.get_states([key])).get(key)
                if stored is None:  # the key was deleted in between: say so rather than guess
                    raise
                first_id: str = orjson.loads(stored.value)
                return first_id, False
        else:
            result = await commit(runtime, effects, connection)
    if result.deliveries == 0:
        logger.warning("event %r (%s) has no subscription: nobody will receive it", event, new.id)
    return new.id, True


def emit_key(event: str, idempotency_key: str) -> str:
    """The state key that holds an emit's idempotency key."""
    return f"conveyor.emit:{event}:{idempotency_key}"


async def commit(
    runtime: Runtime, effects: Effects, connection: Any = None, what: str = "this write"
) -> CommitResult:
    """Commit ``effects`` now, or inside the caller's transaction ``connection`` (on a backend that
    is a :class:`~conveyor.ports.TransactionalOutbox`); raises what kept them from applying
    (naming ``what``, see :func:`~conveyor.runtime.committer.not_applied`)."""
    backend, commits = runtime.backend, [Commit(effects=effects)]
    if connection is None:
        [result] = await backend.commit(commits, runtime.clock.now())
    elif isinstance(backend, TransactionalOutbox):
        [result] = await backend.commit_in(connection, commits, runtime.clock.now())
    else:
        raise ConfigurationError(
            f"{type(backend).__name__} cannot write inside your transaction (connection=); "
            "the PostgreSQL backend can"
        )
    if (error := not_applied(result, what)) is not None:
        raise error
    return result
