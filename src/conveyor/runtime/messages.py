"""Turning user payloads into stored jobs and events (and back), with the checks that go with it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from conveyor.model.envelope import Envelope, Kind, new_id, new_ids
from conveyor.model.errors import ConfigurationError, PayloadTooLargeError, PayloadValidationError
from conveyor.model.history import HistoryKind
from conveyor.model.json_value import dump_json, has_non_finite, json_problem, null_in, unjsonable
from conveyor.model.lifecycle import DEFAULT_OPTIONS, JobOptions, Seconds, seconds
from conveyor.model.text import require_storable
from conveyor.ports import Effects, HistoryEntry, NewEvent, NewJob

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


def child_id(parent_id: str, sequence: int) -> str:
    """The id of the ``sequence``-th message a handler of ``parent_id`` produces.

    Deterministic, so every attempt of one job produces the same ids and a consumer that sees
    two deliveries of one effect (mixed backends) can tell they are the same.
    """
    return hashlib.blake2b(f"{parent_id}/{sequence}".encode(), digest_size=14).hexdigest()


def jsonable(payload: Any, model: type[BaseModel] | None, what: str) -> Any:
    """Validate ``payload`` against ``model`` (when known) and return its JSON-ready form.

    What JSON cannot carry (NaN, ±Infinity, lone surrogates) is found when the message is encoded
    (:meth:`MessageFactory.add_job`, :meth:`~MessageFactory.add_event`), still inside the call.
    """
    if payload is None:
        payload = {}
    if isinstance(payload, BaseModel):
        if model is not None and not isinstance(payload, model):
            payload = validate(model, payload.model_dump(mode="json"), what)
        return payload.model_dump(mode="json")
    if model is not None:
        validate(model, payload, what)
    return payload


def jsonable_many(payloads: Sequence[Any], model: type[BaseModel] | None, what: str) -> list[Any]:
    """:func:`jsonable` for many payloads: plain values are validated without building the model.

    Everything JSON cannot carry is refused here too, before the first batch is stored: one
    ``orjson.dumps`` of the whole list (about 10 ns a small payload) says whether any payload
    needs a closer look.
    """
    if model is None:
        ready = [jsonable(payload, None, what) for payload in payloads]
    else:
        validate_python = model.__pydantic_validator__.validate_python
        ready = []
        for payload in payloads:
            if payload is None or isinstance(payload, BaseModel):
                ready.append(jsonable(payload, model, what))
                continue
            try:
                validate_python(payload)
            except ValidationError as exc:
                raise PayloadValidationError(
                    f"{what}: payload does not match {model.__name__}: {exc}"
                ) from None
            ready.append(payload)
    try:
        suspect = null_in(orjson.dumps(ready)) is not None and has_non_finite(ready)
    except TypeError:
        suspect = True
    if suspect:  # find which payload, and where
        for index, payload in enumerate(ready):
            dump_json(payload, f"payload {index} of {what}" if len(ready) > 1 else f"payload of {what}")
    return ready


def validate(model: type[BaseModel], payload: Any, what: str) -> BaseModel:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise PayloadValidationError(f"{what}: payload does not match {model.__name__}: {exc}") from None


def check_names(
    what: str, name: str, correlation_id: str | None, idempotency_keys: Sequence[str | None] = ()
) -> None:
    """Refuse (:class:`~conveyor.model.errors.UnstorableTextError`) a queue or event name, a
    correlation id or idempotency keys that some backend could not store: they go to text columns
    (see :mod:`conveyor.model.text`). About 50 ns a name."""
    require_storable(name, what)
    if correlation_id is not None:
        require_storable(correlation_id, "correlation id")
    for key in idempotency_keys:
        if key is not None:
            require_storable(key, "idempotency key")


@dataclass(slots=True, frozen=True)
class Origin:
    """Who produces a message: the parent message (for correlation and causation) and the service."""

    parent: Envelope | None = None
    service: str | None = None
    service_version: str | None = None
    trace: dict[str, str] | None = None


class MessageFactory:
    """Builds envelopes and the :class:`NewJob`/:class:`NewEvent` rows that store them."""

    def __init__(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, *, history: bool = True) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.history = history

    def _envelope(
        self,
        kind: Kind,
        name: str,
        message_id: str,
        data: Any,
        origin: Origin,
        correlation_id: str | None,
        idempotency_key: str | None,
        now: float,
        saga: list[dict[str, Any]] | None = None,
        options: JobOptions = DEFAULT_OPTIONS,
    ) -> tuple[Envelope, bytes]:
        parent = origin.parent
        envelope = Envelope(
            id=message_id,
            kind=kind,
            name=name,
            payload=data,
            correlation_id=correlation_id or (parent.correlation_id if parent else message_id),
            causation_id=parent.id if parent else None,
            idempotency_key=idempotency_key,
            trace=origin.trace,
            created_at=now,
            service=origin.service,
            service_version=origin.service_version,
            saga=saga,
            max_attempts=options.max_attempts,
            visibility_timeout=options.lease_seconds,
        )
        return envelope, self._encode(kind, name, envelope.as_dict())

    def _encode(self, kind: Kind, name: str, fields: dict[str, Any], *, checked: bool = False) -> bytes:
        """The stored body; ``checked``: the payload went through :func:`jsonable_many` already."""
        try:
            body = orjson.dumps(fields)
        except TypeError as exc:
            raise PayloadValidationError(
                f"{_payload_of(kind, name)}: {unjsonable(fields['payload'], exc)}"
            ) from None
        # where orjson met NaN or ±Infinity it wrote null: only then is the payload searched
        if not checked and null_in(body) is not None and has_non_finite(fields["payload"]):
            raise PayloadValidationError(f"{_payload_of(kind, name)}: {json_problem(fields['payload'])}")
        if len(body) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{kind} {name!r}: message is {len(body)} bytes, over the limit of "
                f"{self.max_payload_bytes} (App(max_payload_bytes=...))"
            )
        return body

    def add_job(
        self,
        effects: Effects,
        queue: str,
        data: Any,
        *,
        message_id: str | None,
        origin: Origin,
        now: float,
        available_at: float | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        saga: list[dict[str, Any]] | None = None,
        options: JobOptions = DEFAULT_OPTIONS,
    ) -> NewJob:
        """Build the job (and its "enqueued" history entry) into ``effects``; returns it."""
        check_names("queue name", queue, correlation_id)
        if idempotency_key is not None:
            require_storable(idempotency_key, "idempotency key")
        envelope, body = self._envelope(
            "job",
            queue,
            message_id or new_id(),
            data,
            origin,
            correlation_id,
            idempotency_key,
            now,
            saga,
            options,
        )
        new = NewJob(
            envelope.id,
            queue,
            body,
            available_at if available_at is not None else now,
            now,
            idempotency_key,
            options.priority,
            options.lease_seconds,
        )
        effects.jobs.append(new)
        if self.history:
            effects.history.append(
                HistoryEntry(
                    envelope.correlation_id,
                    now,
                    HistoryKind.ENQUEUED,
                    queue,
                    envelope.id,
                    None,
                    _enqueued_detail(now, available_at),
                )
            )
        return new

    def add_jobs(
        self,
        effects: Effects,
        queue: str,
        payloads: Sequence[Any],
        *,
        idempotency_keys: Sequence[str | None],
        origin: Origin,
        now: float,
        available_at: float | None = None,
        correlation_id: str | None = None,
        options: JobOptions = DEFAULT_OPTIONS,
    ) -> None:
        """:meth:`add_job` for many new jobs of one queue (``payloads`` from :func:`jsonable_many`,
        one idempotency key or None each, checked with :func:`check_names`), with what the jobs
        share worked out once."""
        parent = origin.parent
        shared_correlation = correlation_id or (parent.correlation_id if parent else None)
        template = Envelope(
            id="",
            kind="job",
            name=queue,
            payload=None,
            correlation_id="",
            causation_id=parent.id if parent else None,
            trace=origin.trace,
            created_at=now,
            service=origin.service,
            service_version=origin.service_version,
            max_attempts=options.max_attempts,
            visibility_timeout=options.lease_seconds,
        ).as_dict()
        priority, lease = options.priority, options.lease_seconds
        when = available_at if available_at is not None else now
        detail = _enqueued_detail(now, available_at)
        jobs, history = effects.jobs, effects.history
        # looked up once per batch: a member lookup costs ~80 ns on 3.11 (python -m timeit -s
        # 'from conveyor.model.history import HistoryKind' 'HistoryKind.ENQUEUED'), a local ~6 ns
        enqueued = HistoryKind.ENQUEUED
        ids = new_ids(len(payloads))
        for job_id, data, key in zip(ids, payloads, idempotency_keys, strict=True):
            fields = template.copy()
            correlation = shared_correlation or job_id
            fields["id"], fields["payload"], fields["correlation_id"] = job_id, data, correlation
            if key is not None:
                fields["idempotency_key"] = key
            body = self._encode("job", queue, fields, checked=True)
            jobs.append(NewJob(job_id, queue, body, when, now, key, priority, lease))
            if self.history:
                history.append(HistoryEntry(correlation, now, enqueued, queue, job_id, None, detail))

    def add_event(
        self,
        effects: Effects,
        event: str,
        data: Any,
        *,
        message_id: str | None,
        origin: Origin,
        now: float,
        correlation_id: str | None = None,
    ) -> NewEvent:
        """Build the event (and its "emitted" history entry) into ``effects``; returns it."""
        check_names("event name", event, correlation_id)
        envelope, body = self._envelope(
            "event", event, message_id or new_id(), data, origin, correlation_id, None, now
        )
        new = NewEvent(envelope.id, event, body, now)
        effects.events.append(new)
        if self.history:
            effects.history.append(
                HistoryEntry(envelope.correlation_id, now, HistoryKind.EMITTED, event, envelope.id)
            )
        return new


def _payload_of(kind: Kind, name: str) -> str:
    return f"payload of event {name!r}" if kind == "event" else f"payload of a job for queue {name!r}"


def _enqueued_detail(now: float, available_at: float | None) -> str | None:
    """The "enqueued" history entry's detail: when a delayed job becomes available."""
    if available_at is None or available_at <= now:
        return None
    return orjson.dumps({"available_at": available_at}).decode()


def available_at(now: float, delay: Seconds | None, run_at: datetime | float | None) -> float | None:
    """When a job becomes available, from ``delay`` seconds or an absolute ``run_at``."""
    if delay is not None and run_at is not None:
        raise ConfigurationError("give delay= or run_at=, not both")
    if delay is not None:
        return now + max(0.0, seconds(delay))
    if run_at is None:
        return None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware (naive datetimes are ambiguous)")
        return run_at.timestamp()
    return float(run_at)
