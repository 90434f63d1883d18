"""redis-py's exceptions translated into conveyor's, at the backend edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.model.errors import BackendError, BackendUnavailableError

_TRANSIENT_REPLIES = ("BUSY", "MASTERDOWN")
"""Error replies that pass (a long script of another client, a replica without its primary)."""


@contextmanager
def translated() -> Iterator[None]:
    """Translate redis-py's exceptions into conveyor's at the backend edge.

    Unavailable means "retry later": the server is unreachable, loading its data, busy, or a
    replica after a failover. Wrong credentials are a BackendError: retrying cannot fix them.
    """
    try:
        yield
    except (AuthenticationError, AuthorizationError) as exc:
        raise BackendError(f"Redis refused the connection's credentials: {exc}") from exc
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError, OSError) as exc:
        raise BackendUnavailableError(f"Redis is unavailable: {exc}") from exc
    except RedisError as exc:
        if str(exc).startswith(_TRANSIENT_REPLIES):
            raise BackendUnavailableError(f"Redis is unavailable: {exc}") from exc
        raise BackendError(f"Redis failed: {exc}") from exc
