"""Lifecycle of a job: lease length, attempts, timeout and retry strategy (pure policy, no I/O)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from datetime import timedelta

from conveyor.model.errors import ConfigurationError

Seconds = float | int | timedelta


def seconds(value: Seconds) -> float:
    """Normalize a duration given as seconds or :class:`~datetime.timedelta` to float seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


@dataclass(frozen=True, slots=True)
class RetryStrategy:
    """Exponential backoff with jitter.

    The delay before attempt ``n + 1`` (after ``n`` failed attempts) is
    ``min(max_delay, initial_delay * multiplier ** (n - 1))``, then moved by a uniformly random
    fraction in ``[-jitter, +jitter]`` of itself.

    >>> RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter=0).delay(3)
    20.0
    """

    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay"):
            object.__setattr__(self, name, seconds(getattr(self, name)))
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("retry delays must not be negative")
        if self.multiplier < 1:
            raise ConfigurationError("RetryStrategy.multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryStrategy.jitter is a fraction between 0 and 1")

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt`` (1-based), before jitter."""
        exponent = max(attempt - 1, 0)
        try:
            raw = self.initial_delay * self.multiplier**exponent
        except OverflowError:
            raw = self.max_delay
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay after failed attempt ``attempt``, with random jitter applied."""
        base = self.base_delay(attempt)
        if not self.jitter:
            return base
        fraction = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + fraction))


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """How one queue's jobs are leased, timed out and retried.

    * ``visibility_timeout``: how long a lease lasts; a job whose worker dies is leased again after it.
    * ``max_attempts``: attempts before the job is dead-lettered (1 means no retry).
    * ``timeout``: the longest one attempt may run (``None``: bounded by the lease only).
    * ``heartbeat``: extend the lease automatically while the handler runs.
    """

    visibility_timeout: Seconds = 60.0
    max_attempts: int = 5
    timeout: Seconds | None = None
    retry: RetryStrategy = field(default_factory=RetryStrategy)
    heartbeat: bool = False

    def __post_init__(self) -> None:
        lease = seconds(self.visibility_timeout)
        timeout = None if self.timeout is None else seconds(self.timeout)
        object.__setattr__(self, "visibility_timeout", lease)
        object.__setattr__(self, "timeout", timeout)
        if lease <= 0:
            raise ConfigurationError("Lifecycle.visibility_timeout must be positive")
        if self.max_attempts < 1:
            raise ConfigurationError("Lifecycle.max_attempts must be at least 1")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("Lifecycle.timeout must be positive")

    @property
    def lease_seconds(self) -> float:
        return seconds(self.visibility_timeout)

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else seconds(self.timeout)


PRIORITY_RANGE = range(-10, 11)
"""The priorities a job may be enqueued with (the backends' ``conveyor.ports.PRIORITIES``)."""


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What one enqueue may set for its jobs beyond their queue's :class:`Lifecycle`.

    * ``priority``: an int from -10 to 10, 0 by default; among a queue's due jobs the higher
      priority is leased first (then the oldest). A job keeps it through its retries.
    * ``max_attempts``: this job's own attempts before it is dead-lettered.
    * ``visibility_timeout``: this job's own lease (a long job's, say), in place of its queue's.
    """

    priority: int = 0
    max_attempts: int | None = None
    visibility_timeout: Seconds | None = None

    def __post_init__(self) -> None:
        if type(self.priority) is not int or self.priority not in PRIORITY_RANGE:
            raise ConfigurationError(f"priority must be an int from -10 to 10, not {self.priority!r}")
        if self.max_attempts is not None and (type(self.max_attempts) is not int or self.max_attempts < 1):
            raise ConfigurationError(f"max_attempts must be an int of at least 1, not {self.max_attempts!r}")
        if self.visibility_timeout is not None:
            lease = seconds(self.visibility_timeout)
            if not lease > 0 or lease == float("inf"):
                raise ConfigurationError(
                    f"visibility_timeout must be a positive, finite duration, not {self.visibility_timeout!r}"
                )
            object.__setattr__(self, "visibility_timeout", lease)

    @property
    def lease_seconds(self) -> float | None:
        return None if self.visibility_timeout is None else seconds(self.visibility_timeout)

    def applied_to(self, lifecycle: Lifecycle) -> Lifecycle:
        """``lifecycle`` with this job's own attempts and lease in place of its queue's."""
        changes: dict[str, object] = {}
        if self.max_attempts is not None:
            changes["max_attempts"] = self.max_attempts
        if self.visibility_timeout is not None:
            changes["visibility_timeout"] = self.visibility_timeout
        return dataclasses.replace(lifecycle, **changes) if changes else lifecycle  # type: ignore[arg-type]


DEFAULT_OPTIONS = JobOptions()
