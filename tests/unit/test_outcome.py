"""The outcome of an attempt, decided without a clock or a backend (``runtime.outcome``)."""

from __future__ import annotations

import doctest
import random

import pytest

from conveyor import Lifecycle, PermanentError, Retry, RetryStrategy
from conveyor.model.errors import HandlerTimeoutError
from conveyor.ports import Outcome
from conveyor.runtime import outcome
from conveyor.runtime.outcome import DEAD, DONE, Decision, decide, retry_at

NOW = 1_000.0
STEADY = Lifecycle(max_attempts=3, retry=RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter=0))


def test_an_attempt_that_raised_nothing_is_done() -> None:
    assert decide(None, STEADY, 3, NOW) is DONE
    assert DONE.outcome is Outcome.ACK and DONE.retry_at is None


def test_a_failed_attempt_with_attempts_left_retries_after_the_strategys_delay() -> None:
    assert decide(ValueError("boom"), STEADY, 1, NOW) == Decision(Outcome.RETRY, NOW + 5)
    assert decide(ValueError("boom"), STEADY, 2, NOW) == Decision(Outcome.RETRY, NOW + 10)


@pytest.mark.parametrize("error", [ValueError("boom"), HandlerTimeoutError("slow"), Retry(delay=1)])
def test_the_last_attempts_failure_dead_letters_whatever_it_raised(error: BaseException) -> None:
    assert decide(error, STEADY, 3, NOW) is DEAD
    assert decide(error, STEADY, 4, NOW) is DEAD  # past max_attempts (leases lost on the way)


def test_a_permanent_error_dead_letters_on_the_first_attempt() -> None:
    assert decide(PermanentError("never"), STEADY, 1, NOW) is DEAD


def test_a_single_attempt_lifecycle_never_retries() -> None:
    assert decide(ValueError("boom"), Lifecycle(max_attempts=1), 1, NOW) is DEAD


def test_retry_with_a_delay_overrides_the_strategy_and_still_counts_as_an_attempt() -> None:
    assert decide(Retry(delay=42), STEADY, 1, NOW) == Decision(Outcome.RETRY, NOW + 42)
    assert decide(Retry(), STEADY, 2, NOW) == Decision(Outcome.RETRY, NOW + 10)  # no delay: strategy's


def test_a_negative_retry_delay_retries_at_once() -> None:
    assert retry_at(Retry(delay=-5), STEADY, 1, NOW) == NOW


def test_base_exceptions_are_retried_like_any_failure() -> None:
    assert decide(KeyboardInterrupt(), STEADY, 1, NOW) == Decision(Outcome.RETRY, NOW + 5)


def test_retry_at_ignores_attempts_left() -> None:
    """What a lost compare_and_set uses: it retries even the last attempt (the next lease, past
    max_attempts, dead-letters it)."""
    assert retry_at(None, STEADY, 3, NOW) == NOW + 20


def test_jitter_comes_from_the_given_generator() -> None:
    jittered = Lifecycle(retry=RetryStrategy(initial_delay=10, jitter=0.5))
    first = decide(ValueError(), jittered, 1, NOW, random.Random(3))
    assert first == decide(ValueError(), jittered, 1, NOW, random.Random(3))
    assert first.retry_at is not None and NOW + 5 <= first.retry_at <= NOW + 15


def test_the_modules_example_holds() -> None:
    result = doctest.testmod(outcome)
    assert result.attempted and not result.failed
