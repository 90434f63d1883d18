"""What becomes of an attempt: done, retried at a time, or dead-lettered.

Pure: the error, the queue's lifecycle, the attempt's number and the time in, the decision out (no
clock, no I/O), so every rule is tested directly. The worker turns the decision into a
:class:`~conveyor.ports.Settlement`.

>>> from conveyor.model.lifecycle import Lifecycle, RetryStrategy
>>> lifecycle = Lifecycle(max_attempts=3, retry=RetryStrategy(initial_delay=5, jitter=0))
>>> decide(ValueError("boom"), lifecycle, 1, 100.0)
Decision(outcome=<Outcome.RETRY: 'retry'>, retry_at=105.0)
>>> decide(ValueError("boom"), lifecycle, 3, 100.0).outcome
<Outcome.DEAD: 'dead'>
"""

from __future__ import annotations

import random
from typing import NamedTuple

from conveyor.model.errors import PermanentError, Retry
from conveyor.model.lifecycle import Lifecycle
from conveyor.ports import Outcome


class Decision(NamedTuple):
    outcome: Outcome
    """``ACK`` (done), ``RETRY`` or ``DEAD``"""
    retry_at: float | None = None
    """when a retried job is leased again (None unless ``outcome`` is ``RETRY``)"""


DONE = Decision(Outcome.ACK)
DEAD = Decision(Outcome.DEAD)


def decide(
    error: BaseException | None,
    lifecycle: Lifecycle,
    attempt: int,
    now: float,
    rng: random.Random | None = None,
) -> Decision:
    """The fate of attempt number ``attempt`` (1-based) that ended at ``now``, having raised
    ``error`` (None: its handler returned, it is done).

    A :class:`PermanentError`, or a failure of the last attempt ``lifecycle`` allows, dead-letters
    the job; any other failure (``Retry`` included: it counts as an attempt) retries it at
    :func:`retry_at`.
    """
    if error is None:
        return DONE
    if isinstance(error, PermanentError) or attempt >= lifecycle.max_attempts:
        return DEAD
    return Decision(Outcome.RETRY, retry_at(error, lifecycle, attempt, now, rng))


def retry_at(
    error: BaseException | None,
    lifecycle: Lifecycle,
    attempt: int,
    now: float,
    rng: random.Random | None = None,
) -> float:
    """When a job whose attempt ``attempt`` failed at ``now`` with ``error`` runs again, whether or
    not attempts remain: after ``Retry(delay=...)``'s own delay (a negative one is none), else
    after the delay of ``lifecycle``'s retry strategy (its jitter drawn from ``rng``)."""
    if isinstance(error, Retry) and error.delay is not None:
        return now + max(0.0, error.delay)
    return now + lifecycle.retry.delay(attempt, rng)
