"""The connection side of the Redis backend: the client, its scripts, the wake-up notifier.

:class:`Connections` is the base of :class:`~conveyor.backends.redis.backend.RedisBackend`: every
script runs through :meth:`Connections._run`, which translates driver errors (see
:mod:`~conveyor.backends.redis.errors`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from conveyor.backends.redis.errors import translated
from conveyor.backends.redis.notifier import Notifier
from conveyor.backends.redis.scripts import NOTHING, Arg, Packed, Scripts, command
from conveyor.model.errors import BackendError, ConfigurationError

logger = logging.getLogger("conveyor.backends.redis")

MIN_REDIS_VERSION = (6, 2)

_REPEAT_PROBLEM_AFTER = 60.0
"""Seconds before the same corrupt-key message is logged again (a skipped queue meets it on every
lease call)."""


class Connections:
    """The client, the scripts and the wake-ups.

    Not used alone: :class:`~conveyor.backends.redis.backend.RedisBackend` sets these attributes
    from its URL and options.
    """

    prefix: str
    _shown_url: str
    _driver_url: str
    _scripts: Scripts
    _redis: Redis | None
    _notifier: Notifier | None
    _sender: str
    _reported: dict[bytes, float]

    async def connect(self) -> None:
        """Open the connection pool and load the scripts (raises if Redis is unreachable)."""
        if self._redis is not None:
            return
        try:
            client = Redis.from_url(
                self._driver_url,
                # No silent retries: a retried script could apply twice. The runtime retries.
                retry=Retry(NoBackoff(), 0),
                # A silent network partition must surface as an error, not hang a worker forever.
                socket_connect_timeout=5.0,
                socket_timeout=30.0,
                socket_keepalive=True,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid Redis URL {self._shown_url!r}: {exc}") from exc
        try:
            with translated():
                info = await command(client, "INFO", "server")
                await self._scripts.load(client)
        except TypeError as exc:
            # redis-py meets unknown URL options only when it opens the first connection
            await client.aclose()
            raise ConfigurationError(f"invalid Redis URL {self._shown_url!r}: {exc}") from exc
        except BaseException:
            await client.aclose()
            raise
        version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".")[:2])
        if version < MIN_REDIS_VERSION:
            await client.aclose()
            raise ConfigurationError(
                f"conveyor needs Redis {'.'.join(map(str, MIN_REDIS_VERSION))} or newer "
                f"(ZADD LT); {self._shown_url!r} runs {info.get('redis_version')}"
            )
        self._redis = client
        self._notifier = Notifier(client, lambda queue: self._key(queue, "notify"), self._sender)

    async def close(self) -> None:
        """Stop the wake-up listener and close every connection."""
        notifier, client = self._notifier, self._redis
        self._notifier = self._redis = None
        if notifier is not None:
            await notifier.close()
        if client is not None:
            await client.aclose()

    @property
    def _client(self) -> Redis:
        if self._redis is None:
            raise BackendError("the Redis backend is not connected: call connect() first")
        return self._redis

    def _key(self, queue: str, suffix: str) -> str:
        return f"{self.prefix}:{{{queue}}}:{suffix}"

    async def _run(self, script: str, args: list[Arg], more: Packed = NOTHING) -> Any:
        client = self._client
        with translated():
            return await self._scripts.run(client, script, args, more)

    def _report(self, problems: list[bytes]) -> None:
        """Log each corrupt key a script met and skipped or moved aside, a repeated one (a skipped
        queue) once a minute."""
        clock = time.monotonic()
        if len(self._reported) > 1000:  # each dead-lettered job has its own message: forget them
            self._reported.clear()
        for problem in problems:
            if clock - self._reported.get(problem, -_REPEAT_PROBLEM_AFTER) >= _REPEAT_PROBLEM_AFTER:
                self._reported[problem] = clock
                logger.error("Corrupt Redis key: %s", problem.decode(errors="backslashreplace"))

    def _signal(self, queues: list[bytes]) -> None:
        # wake this instance's waiters at once, without the round trip through pub/sub
        if self._notifier is not None and queues:
            self._notifier.signal(queue.decode() for queue in queues)
