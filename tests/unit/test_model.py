"""The model: retry policy, lifecycle, envelope encoding (no I/O)."""

from __future__ import annotations

import random
from datetime import timedelta

import orjson
import pytest

from conveyor import Lifecycle, RetryStrategy
from conveyor.model.envelope import Envelope, new_id
from conveyor.model.errors import ConfigurationError, UndecodableMessageError


def test_retry_delay_grows_exponentially_up_to_max_delay() -> None:
    strategy = RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter=0)
    assert [strategy.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_retry_delay_survives_huge_attempt_numbers() -> None:
    assert RetryStrategy(initial_delay=1, max_delay=30, multiplier=10, jitter=0).delay(10_000) == 30


def test_jitter_is_random_within_its_fraction() -> None:
    strategy = RetryStrategy(initial_delay=10, max_delay=100, multiplier=2, jitter=0.1)
    rng = random.Random(7)
    delays = [strategy.delay(1, rng) for _ in range(1000)]
    assert min(delays) >= 9 and max(delays) <= 11
    assert min(delays) < 9.2 and max(delays) > 10.8  # spread over the whole band


@pytest.mark.parametrize("kwargs", [{"multiplier": 0.5}, {"jitter": 1.5}, {"initial_delay": -1}])
def test_invalid_retry_strategy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryStrategy(**kwargs)


def test_lifecycle_takes_timedelta_and_validates() -> None:
    lifecycle = Lifecycle(visibility_timeout=timedelta(minutes=2), timeout=timedelta(seconds=30))
    assert lifecycle.lease_seconds == 120 and lifecycle.timeout_seconds == 30
    for bad in ({"visibility_timeout": 0}, {"max_attempts": 0}, {"timeout": -1}):
        with pytest.raises(ConfigurationError):
            Lifecycle(**bad)  # type: ignore[arg-type]


def test_envelope_round_trips_through_json() -> None:
    envelope = Envelope(
        id=new_id(),
        kind="event",
        name="order_placed",
        payload={"order_id": "42", "n": [1, 2]},
        correlation_id="order-42",
        causation_id="c1",
        idempotency_key="k",
        trace={"traceparent": "00-x"},
        created_at=1.5,
        service="orders",
        service_version="1",
    )
    assert Envelope.decode(envelope.encode()) == envelope


def test_unset_optional_fields_are_not_stored_and_read_back_as_none() -> None:
    envelope = Envelope(id="j1", kind="job", name="q", payload={}, correlation_id="j1", created_at=2.0)
    body = envelope.encode()
    assert (
        body
        == b'{"v":1,"id":"j1","kind":"job","name":"q","payload":{},"correlation_id":"j1","created_at":2.0}'
    )
    assert Envelope.decode(body) == envelope
    # what earlier versions wrote, every field present, still reads the same
    spelled_out = (
        b'{"v":1,"id":"j1","kind":"job","name":"q","payload":{},"correlation_id":"j1",'
        b'"causation_id":null,"idempotency_key":null,"trace":null,"created_at":2.0,'
        b'"service":null,"service_version":null}'
    )
    assert Envelope.decode(spelled_out) == envelope


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a conveyor envelope"),
        (b'{"v": 1, "kind": "job"}', "lacks field"),
        (
            b'{"v": 1, "kind": "telegram", "id": "x", "name": "q", "correlation_id": "c"}',
            'must be "job" or "event"',
        ),
    ],
)
def test_undecodable_messages_raise_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(UndecodableMessageError, match=message):
        Envelope.decode(body)


GOOD_FIELDS: dict[str, object] = {
    "v": 1,
    "id": "j1",
    "kind": "job",
    "name": "q",
    "payload": {"n": 1},
    "correlation_id": "c1",
    "created_at": 2.0,
}


@pytest.mark.parametrize(
    ("field", "value", "found"),
    [
        ("v", True, "v is true"),
        ("v", 1.0, "v is 1.0"),
        ("v", "1", "v is '1'"),
        ("id", 7, "'id' must be a string, found number 7"),
        ("id", None, "'id' must be a string, found null"),
        ("name", ["q"], "'name' must be a string, found array"),
        ("id", "a\x00b", "'id' holds a NUL character: 'a\\x00b'"),
        ("name", "\x00", "'name' holds a NUL character"),
        ("correlation_id", "order-42\x00", "'correlation_id' holds a NUL character"),
        ("correlation_id", {"a": 1}, "'correlation_id' must be a string, found object"),
        ("kind", "telegram", "'kind' must be \"job\" or \"event\", found string 'telegram'"),
        ("kind", 1, '\'kind\' must be "job" or "event", found number 1'),
        ("created_at", "abc", "'created_at' must be a number, found string 'abc'"),
        ("created_at", [1], "'created_at' must be a number, found array"),
        ("created_at", True, "'created_at' must be a number, found boolean true"),
        ("created_at", None, "'created_at' must be a number, found null"),
        ("causation_id", 1, "'causation_id' must be a string or null, found number 1"),
        ("idempotency_key", ["k"], "'idempotency_key' must be a string or null, found array"),
        ("service", False, "'service' must be a string or null, found boolean false"),
        ("service_version", 1.5, "'service_version' must be a string or null, found number 1.5"),
        ("trace", "00-abc", "'trace' must be an object of strings or null, found string"),
        ("trace", ["traceparent"], "'trace' must be an object of strings or null, found array"),
        ("trace", {"traceparent": 1}, "'trace' must be an object of strings or null, found object"),
        ("saga", "refund", "or null, found string 'refund'"),
        ("saga", {"queue": "q"}, "or null, found object {'queue': 'q'}"),
        ("saga", [1], "or null, found array [1]"),
        ("saga", [{"payload": {}}], "'saga' must be an array of compensations"),
        ("saga", [{"queue": 1, "payload": {}}], "'saga' must be an array of compensations"),
        ("saga", [{"queue": "refund"}], "'saga' must be an array of compensations"),
    ],
)
def test_an_envelope_field_of_the_wrong_type_is_undecodable(field: str, value: object, found: str) -> None:
    body = orjson.dumps({**GOOD_FIELDS, field: value})
    with pytest.raises(UndecodableMessageError) as raised:
        Envelope.decode(body)
    assert found in str(raised.value)


@pytest.mark.parametrize("field", ["id", "kind", "name", "correlation_id"])
def test_an_envelope_without_a_required_field_is_undecodable(field: str) -> None:
    body = orjson.dumps({k: v for k, v in GOOD_FIELDS.items() if k != field})
    with pytest.raises(UndecodableMessageError, match=f"envelope lacks field '{field}'"):
        Envelope.decode(body)


def test_a_huge_or_deep_wrong_value_is_described_briefly() -> None:
    good = orjson.dumps({**GOOD_FIELDS, "created_at": "HERE"})
    deep = b"[" * 1000 + b"1" + b"]" * 1000  # deeper than repr() or orjson.dumps can go
    for value in (orjson.dumps("x" * 1_000_000), deep, orjson.dumps(list(range(100_000)))):
        with pytest.raises(UndecodableMessageError) as raised:
            Envelope.decode(good.replace(b'"HERE"', value))
        assert len(str(raised.value)) < 200


def test_optional_fields_may_be_absent_or_null_and_odd_payloads_decode() -> None:
    nulls = dict.fromkeys(("causation_id", "idempotency_key", "service", "service_version", "trace", "saga"))
    assert Envelope.decode(orjson.dumps({**GOOD_FIELDS, **nulls})).saga is None
    assert (
        Envelope.decode(orjson.dumps({k: v for k, v in GOOD_FIELDS.items() if k != "created_at"})).created_at
        == 0.0
    )
    assert Envelope.decode(orjson.dumps({**GOOD_FIELDS, "created_at": 5})).created_at == 5.0
    for payload in (None, [], "text", 2**63 - 1, -1.5e300, "\u2603\U0001f600", {"": [[[{}]]]}):
        assert Envelope.decode(orjson.dumps({**GOOD_FIELDS, "payload": payload})).payload == payload
    saga = [{"queue": "refund", "payload": {"n": 1}, "step": "charge"}]
    traced = {"traceparent": "00-x", "tracestate": ""}
    envelope = Envelope.decode(orjson.dumps({**GOOD_FIELDS, "saga": saga, "trace": traced}))
    assert envelope.saga == saga and envelope.trace == traced


def test_a_body_that_is_not_an_object_says_what_it_is() -> None:
    for body, what in (
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"null", "null"),
        (b"3", "a number"),
    ):
        with pytest.raises(UndecodableMessageError, match=f"not a conveyor envelope: {what}"):
            Envelope.decode(body)


def test_new_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids[0][:12] <= ids[-1][:12]


def test_workflow_past_its_deadline_is_timed_out() -> None:
    from conveyor import Workflow
    from conveyor.operations.status import summarize
    from conveyor.ports import HistoryEntry

    flow = Workflow("refund", start="refund_requested", completed=["refund_paid"], deadline=3600)
    history = [
        HistoryEntry("r-1", 1000.0, "emitted", "refund_requested", "e1"),
        HistoryEntry("r-1", 1000.0, "enqueued", "review", "j1"),
    ]
    assert summarize("r-1", history, [flow], now=2000.0).state == "running"
    assert summarize("r-1", history, [flow], now=1000.0 + 3601).state == "timed_out"
    done = [*history, HistoryEntry("r-1", 1500.0, "emitted", "refund_paid", "e2")]
    assert summarize("r-1", done, [flow], now=1000.0 + 9999).state == "completed"
