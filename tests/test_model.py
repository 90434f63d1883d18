"""The model: retry policy, lifecycle, envelope encoding (no I/O)."""

from __future__ import annotations

import random
from datetime import timedelta

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
            "unknown message kind",
        ),
    ],
)
def test_undecodable_messages_raise_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(UndecodableMessageError, match=message):
        Envelope.decode(body)


def test_new_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids[0][:12] <= ids[-1][:12]


def test_workflow_past_its_deadline_is_timed_out() -> None:
    from conveyor import Workflow
    from conveyor.ports import HistoryEntry
    from conveyor.workflows.status import summarize

    flow = Workflow("refund", start="refund_requested", completed=["refund_paid"], deadline=3600)
    history = [
        HistoryEntry("r-1", 1000.0, "emitted", "refund_requested", "e1"),
        HistoryEntry("r-1", 1000.0, "enqueued", "review", "j1"),
    ]
    assert summarize("r-1", history, [flow], now=2000.0).state == "running"
    assert summarize("r-1", history, [flow], now=1000.0 + 3601).state == "timed_out"
    done = [*history, HistoryEntry("r-1", 1500.0, "emitted", "refund_paid", "e2")]
    assert summarize("r-1", done, [flow], now=1000.0 + 9999).state == "completed"
