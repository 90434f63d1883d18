"""The fuzz contract: no stored body makes a worker loop, crash or mislabel its dead letter.

Hypothesis draws batches of message bodies as a broken or foreign producer might store them:
arbitrary bytes, arbitrary JSON, envelopes with one field of a wrong type or missing, and valid
envelopes with odd payloads (deep nesting, integers past 64 bits, any Unicode, trace context of any
text). A worker with tracing on runs them beside good jobs. Each body must end one way, on its first
lease: a valid one runs its handler once and is acknowledged; any other is dead-lettered after
exactly one lease as ``UndecodableMessageError`` (naming the field that is wrong) or
``PayloadValidationError``, with the raw body kept. After every batch a good job still runs.

``CONVEYOR_FUZZ_EXAMPLES`` sets the number of batches (default 40, a few seconds per backend; CI
draws the same ones every run). Soak locally with, say,
``CONVEYOR_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/contract/test_fuzz_contract.py -o timeout=0``
(1,500 batches took 2.5 minutes for the four backends).

Subclass :class:`FuzzContract` and provide ``backend_url`` as for
:class:`~conveyor.testing.runtime_contract.RuntimeContract`. Needs ``hypothesis``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.ports import Commit, DeadLetter, Effects, NewJob
from conveyor.testing import running, wait_until

RAN = "ran"
UNDECODABLE = "UndecodableMessageError"
INVALID = "PayloadValidationError"
ANY_QUEUE, TYPED_QUEUE = "fuzz_any", "fuzz_typed"


def fuzz_settings() -> settings:
    """The fuzz test's profile: ``CONVEYOR_FUZZ_EXAMPLES`` batches (40 by default), no deadline (a
    batch waits on a worker), and in CI (``CI=true``) the same batches every run."""
    profile = settings(
        max_examples=int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "40")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return settings(profile, derandomize=True, database=None)
    return profile


@dataclass(frozen=True)
class Body:
    """One stored body, the queue it is stored in and how it may end."""

    what: str
    queue: str
    raw: bytes
    ends: frozenset[str]
    """RAN, UNDECODABLE and/or INVALID"""
    names: str | None = None
    """what an UNDECODABLE error's message must contain (the field that is wrong)"""


class Sample(BaseModel):
    """The typed queue's payload."""

    n: int


# strategies

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
"""Any text but a lone surrogate, which UTF-8 cannot carry (see :func:`_lone_surrogate`)."""
_NAME = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=12)
"""A valid id or name: no NUL (no backend stores one in a key, see Envelope.decode)."""
_SCALARS = (
    st.none()
    | st.booleans()
    # past 64 bits, as far as a double reaches (orjson reads larger ones as a float)
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=16,
)
_ABSENT = object()
_OPTIONAL_TEXT = ("causation_id", "idempotency_key", "service", "service_version")
_TRACEPARENTS = st.sampled_from(
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-0000000000000000-00",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "",
    ]
)
_TRACE = st.dictionaries(_TEXT, _TEXT, max_size=3) | st.fixed_dictionaries(
    {"traceparent": _TRACEPARENTS | _TEXT}, optional={"tracestate": _TEXT}
)


def _encode(fields: dict[str, Any], ascii_only: bool) -> bytes:
    # the standard library's json, not orjson: it writes integers past 64 bits
    return json.dumps(fields, ensure_ascii=ascii_only).encode()


@st.composite
def _envelope(draw: st.DrawFn) -> dict[str, Any]:
    """A valid envelope's fields, with any payload and the optional fields present or not."""
    fields: dict[str, Any] = {
        "v": 1,
        "id": draw(_NAME),
        "kind": draw(st.sampled_from(["job", "event"])),
        "name": draw(_NAME),
        "payload": draw(_JSON),
        "correlation_id": draw(_NAME),
    }
    created_at = draw(st.just(_ABSENT) | st.floats(0, 4e9) | st.integers(0, 2**53))
    if created_at is not _ABSENT:
        fields["created_at"] = created_at
    for name in _OPTIONAL_TEXT:
        value = draw(st.just(_ABSENT) | st.none() | _TEXT)
        if value is not _ABSENT:
            fields[name] = value
    trace = draw(st.just(_ABSENT) | st.none() | _TRACE)
    if trace is not _ABSENT:
        fields["trace"] = trace
    for key, value in draw(st.dictionaries(_TEXT, _JSON, max_size=2)).items():
        fields.setdefault(key, value)  # fields of a later version: ignored
    return fields


def _fits(field: str, value: Any) -> bool:
    """Whether ``value`` is of the type an envelope's ``field`` must have."""
    if field == "v":
        return type(value) is int and value == 1
    if field == "kind":
        return value in ("job", "event")
    if field in ("id", "name", "correlation_id"):
        return type(value) is str and "\x00" not in value
    if field == "created_at":
        return type(value) in (int, float)
    if field in _OPTIONAL_TEXT:
        return value is None or type(value) is str
    if field == "trace":
        return value is None or (type(value) is dict and all(type(v) is str for v in value.values()))
    assert field == "saga"
    return value is None or (
        type(value) is list
        and all(type(s) is dict and type(s.get("queue")) is str and "payload" in s for s in value)
    )


_FIELDS = ("v", "id", "kind", "name", "correlation_id", "created_at", *_OPTIONAL_TEXT, "trace", "saga")
_WRONG = {
    # each field's likely wrong values first, then any JSON that does not fit
    "v": st.sampled_from([True, 1.0, "1", 2, 0, None]),
    "id": st.sampled_from(["a\x00b", 7, None]),
    "name": st.sampled_from(["\x00", ["q"]]),
    "correlation_id": st.sampled_from(["wf\x00", {"id": "wf"}]),
    "kind": st.sampled_from(["telegram", "JOB", 1]),
    "created_at": st.sampled_from(["abc", [1], True, None, "1.5"]),
    "trace": st.sampled_from(["00-abc", ["traceparent"], {"traceparent": 1}, {"a": None}]),
    "saga": st.sampled_from(["refund", {"queue": "q"}, [1], [{"queue": "q"}], [{"queue": 1, "payload": {}}]]),
}


@st.composite
def _wrong_field(draw: st.DrawFn) -> Body:
    fields = draw(_envelope())
    field = draw(st.sampled_from(_FIELDS))
    likely = _WRONG.get(field, st.sampled_from([1, ["x"], False]))
    value = draw(likely | _JSON.filter(lambda value: not _fits(field, value)))
    assert not _fits(field, value)
    fields[field] = value
    names = "version 1" if field == "v" else repr(field)
    return Body(
        f"wrong {field}", ANY_QUEUE, _encode(fields, draw(st.booleans())), frozenset([UNDECODABLE]), names
    )


@st.composite
def _missing_field(draw: st.DrawFn) -> Body:
    fields = draw(_envelope())
    field = draw(st.sampled_from(["v", "id", "kind", "name", "correlation_id"]))
    del fields[field]
    names = "version 1" if field == "v" else f"lacks field {field!r}"
    return Body(f"no {field}", ANY_QUEUE, _encode(fields, True), frozenset([UNDECODABLE]), names)


@st.composite
def _valid(draw: st.DrawFn) -> Body:
    fields = draw(_envelope())
    if draw(st.booleans()):
        return Body("valid", ANY_QUEUE, _encode(fields, draw(st.booleans())), frozenset([RAN]))
    # the typed queue: a payload of its model runs, any other may be coerced or refused
    if draw(st.booleans()):
        fields["payload"] = {"n": draw(st.integers(-(2**63), 2**63 - 1))}
        return Body("valid typed", TYPED_QUEUE, _encode(fields, True), frozenset([RAN]))
    return Body("odd typed", TYPED_QUEUE, _encode(fields, False), frozenset([RAN, INVALID]))


@st.composite
def _deep(draw: st.DrawFn) -> Body:
    """A payload nested ``depth`` arrays or objects deep: orjson reads up to 1024 levels."""
    fields = draw(_envelope())
    del fields["payload"]
    depth = draw(st.integers(1, 1000) | st.integers(1030, 5000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    innermost = b"[]" if opener == b"[" else b"1"
    deep = opener * depth + innermost + closer * depth
    raw = _encode(fields, True)[:-1] + b',"payload":' + deep + b"}"
    queue = draw(st.sampled_from([ANY_QUEUE, TYPED_QUEUE]))
    # a deep payload reaches the typed queue's model, which it cannot fit (no "n")
    ends = UNDECODABLE if depth > 1000 else RAN if queue == ANY_QUEUE else INVALID
    return Body(f"payload {depth} deep", queue, raw, frozenset([ends]))


@st.composite
def _lone_surrogate(draw: st.DrawFn) -> Body:
    """An envelope with a lone surrogate written as a JSON escape (``"\\ud800"``), which a JSON
    writer of another language may well produce: no UTF-8 text holds it."""
    fields = draw(_envelope())
    field = draw(st.sampled_from(["id", "name", "correlation_id", "payload", "service"]))
    fields[field] = "\x00lone"
    raw = _encode(fields, True).replace(b'"\\u0000lone"', b'"\\ud800"', 1)
    return Body(f"lone surrogate in {field}", ANY_QUEUE, raw, frozenset([UNDECODABLE]), "not valid JSON")


_BODIES = st.one_of(
    st.binary(max_size=64).map(lambda raw: Body("bytes", ANY_QUEUE, raw, frozenset([UNDECODABLE]))),
    _JSON.map(lambda value: Body("json", ANY_QUEUE, json.dumps(value).encode(), frozenset([UNDECODABLE]))),
    _wrong_field(),
    _missing_field(),
    _valid(),
    _deep(),
    _lone_surrogate(),
)


class FuzzContract:
    """Every backend passes this unchanged."""

    def test_no_stored_body_makes_a_worker_loop_crash_or_mislabel(self, backend_url: str) -> None:
        # One app and one event loop for every example (opening a backend per example would cost
        # more than the example): hypothesis drives a plain function, which runs each batch on
        # the loop the app lives in.
        with asyncio.Runner() as runner:
            harness = _Harness(backend_url)
            runner.run(harness.start())
            try:

                @fuzz_settings()
                @given(st.lists(_BODIES, min_size=1, max_size=8))
                def each_batch(batch: list[Body]) -> None:
                    runner.run(harness.check(batch))

                each_batch()
            finally:
                runner.run(harness.stop())


class _Harness:
    """An app serving the fuzz queues, and how one batch of bodies is stored and checked."""

    def __init__(self, backend_url: str) -> None:
        svc = Service("fuzz")
        self.ran: Counter[str] = Counter()
        # a short lease and a second attempt: a job that escaped its first lease comes back soon,
        # and its dead letter then says "attempt 3 exceeds max_attempts", which the check refuses
        lifecycle = Lifecycle(max_attempts=2, visibility_timeout=2)

        @svc.queue_worker(ANY_QUEUE, lifecycle=lifecycle)
        async def anything(ctx: Context, job: Any) -> None:
            self.ran[ctx.job.id] += 1

        @svc.queue_worker(TYPED_QUEUE, payload=Sample, lifecycle=lifecycle)
        async def typed(ctx: Context, job: Sample) -> None:
            self.ran[ctx.job.id] += 1

        self.app = App(
            [svc],
            backend=backend_url,
            tracing=True,
            worker=WorkerConfig(concurrency=16, poll_interval=0.05, shutdown_grace=5),
        )
        self._ids = (f"fuzz-{n}" for n in itertools.count())
        self._stack = contextlib.AsyncExitStack()
        self._internal = _Errors()

    async def start(self) -> None:
        logging.getLogger("conveyor.worker").addHandler(self._internal)
        await self._stack.enter_async_context(running(self.app))

    async def stop(self) -> None:
        logging.getLogger("conveyor.worker").removeHandler(self._internal)
        await self._stack.aclose()

    async def check(self, batch: list[Body]) -> None:
        app = self.app
        now = app.clock.now()
        stored = {next(self._ids): body for body in batch}
        jobs = [NewJob(job_id, body.queue, body.raw, now, now) for job_id, body in stored.items()]
        await app.backend.commit([Commit(effects=Effects(jobs=jobs))], now)

        async def settled() -> list[dict[str, DeadLetter]]:
            dead = {d.id: d for d in await app.backend.dead_letters(None, 1000, 0) if d.id in stored}
            if any(job_id not in dead and job_id not in self.ran for job_id in stored):
                return []
            stats = await app.stats([ANY_QUEUE, TYPED_QUEUE])
            return [dead] if all(s.ready + s.leased == 0 for s in stats) else []

        [dead] = await wait_until(settled, timeout=8, message="every body of the batch settled")
        for job_id, body in stored.items():
            if job_id in dead:
                entry = dead[job_id]
                kind = entry.error.type.rsplit(".", 1)[-1]
                assert kind in body.ends, (body, entry.error)
                assert entry.attempts == 1, (body, entry.attempts, entry.error)
                assert entry.body == body.raw, body
                assert body.names is None or body.names in entry.error.message, (body, entry.error)
                assert job_id not in self.ran, body
            else:
                assert RAN in body.ends and self.ran[job_id] == 1, (body, self.ran[job_id])
        assert not self._internal.records, self._internal.records
        sentinel = await app.enqueue(ANY_QUEUE, {"good": True})
        await wait_until(lambda: sentinel in self.ran, timeout=8, message="a good job ran after the batch")
        await app.backend.purge(list(dead), None)


class _Errors(logging.Handler):
    """The worker's records of a job whose settling raised or whose outcome could not commit:
    either way it would run again when its lease expires."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(("internal error", "could not commit")):
            self.records.append(record.getMessage())
