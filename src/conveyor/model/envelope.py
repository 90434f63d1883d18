"""The envelope: what conveyor stores for every job and event, serialized as JSON (orjson)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from conveyor.model.errors import UndecodableMessageError

Kind = Literal["job", "event"]
JSONValue = Any


def new_id() -> str:
    """A time-ordered unique id: 12 hex digits of milliseconds, then 16 random hex digits."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"


def new_ids(count: int) -> list[str]:
    """``count`` ids as :func:`new_id` makes them, with one clock read and one ``urandom`` call."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    noise = os.urandom(8 * count).hex()
    return [stamp + noise[at : at + 16] for at in range(0, 16 * count, 16)]


OPTIONAL_FIELDS = ("causation_id", "idempotency_key", "trace", "service", "service_version", "saga")
"""Envelope fields stored only when set."""


@dataclass(slots=True)
class Envelope:
    """One message: a job for a queue or an event for a topic.

    ``correlation_id`` names the workflow instance and is inherited by everything a handler emits or
    enqueues; ``causation_id`` is the id of the message whose handler produced this one. ``trace``
    carries W3C trace context (``traceparent``/``tracestate``). ``attempt`` is not stored: it is set
    from the lease when a job is delivered.
    """

    id: str
    kind: Kind
    name: str
    payload: JSONValue
    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None
    trace: dict[str, str] | None = None
    created_at: float = 0.0
    service: str | None = None
    service_version: str | None = None
    saga: list[dict[str, Any]] | None = None
    """On a compensation job: the compensations still to run after it, in order."""
    attempt: int = field(default=0, compare=False)

    def encode(self) -> bytes:
        return orjson.dumps(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The stored form's fields, in the order :meth:`encode` writes them. Optional fields that
        are None are left out (a third of a plain job's bytes); :meth:`decode` reads them as None."""
        fields: dict[str, Any] = {
            "v": 1,
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "created_at": self.created_at,
        }
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields

    @classmethod
    def decode(cls, body: bytes | str) -> Envelope:
        """Decode a stored envelope; anything else raises :class:`UndecodableMessageError`."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UndecodableMessageError(f"message is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != 1:
            raise UndecodableMessageError("message is not a conveyor envelope (version 1)")
        try:
            kind = data["kind"]
            if kind not in ("job", "event"):
                raise UndecodableMessageError(f"unknown message kind {kind!r}")
            return cls(
                id=str(data["id"]),
                kind=kind,
                name=str(data["name"]),
                payload=data.get("payload"),
                correlation_id=str(data["correlation_id"]),
                causation_id=data.get("causation_id"),
                idempotency_key=data.get("idempotency_key"),
                trace=data.get("trace"),
                created_at=float(data.get("created_at") or 0.0),
                service=data.get("service"),
                service_version=data.get("service_version"),
                saga=data.get("saga"),
            )
        except KeyError as exc:
            raise UndecodableMessageError(f"envelope lacks field {exc.args[0]!r}") from None
