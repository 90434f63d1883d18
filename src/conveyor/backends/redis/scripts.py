"""The Lua scripts beside this module: loaded once with SCRIPT LOAD, run by SHA with EVALSHA.

Redis forgets loaded scripts on a restart or a ``SCRIPT FLUSH``; a ``NOSCRIPT`` reply reloads the
script and runs the call again, which is safe because a script that was not found did not run.

A script call is packed here and sent on a pooled connection directly: redis-py's generic command
path costs more than the script itself for a batch of thousands of arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

NAMES = (
    "lease",
    "commit",
    "extend",
    "stats",
    "dead_letters",
    "redrive",
    "purge",
    "prune_history",
    "instances",
    "pause",
    "leases",
    "counts",
    "job",
    "cancel",
    "find_dead",
)

Arg = bytes | str | int | float

BULK = b"$%d\r\n%b\r\n"
"""One RESP bulk string: ``BULK % (len(data), data)``; ``BULK * n`` formats n of them at once."""


class _Executes(Protocol):
    async def execute_command(self, *args: Any) -> Any: ...


class _LendsConnections(Protocol):
    async def get_connection(self) -> AbstractConnection: ...
    async def release(self, connection: AbstractConnection) -> None: ...


# redis-py leaves ``execute_command`` and ``ConnectionPool.get_connection`` untyped (it began typing
# its asyncio API in 8.2, ``PubSub.aclose`` first): seen through these Protocols they have the types
# used here, checked by mypy against redis-py's own, and stay clean whichever of them a release types
# next, where a ``type: ignore`` would turn unused.


async def command(client: Redis, *args: Any) -> Any:
    """Send one command."""
    executor: _Executes = client
    return await executor.execute_command(*args)


def bulk(arg: Arg) -> bytes:
    """``arg`` as a RESP bulk string (ints and floats as ``repr``: every digit of a double)."""
    data = arg if type(arg) is bytes else arg.encode() if type(arg) is str else repr(arg).encode()
    return BULK % (len(data), data)


@dataclass(slots=True, frozen=True)
class Packed:
    """Arguments already encoded as RESP bulk strings, ``count`` of them.

    The hot paths (a commit batch of thousands of jobs) encode each record with one ``%``
    format instead of one call per argument.
    """

    count: int
    data: bytes


NOTHING = Packed(0, b"")


async def _round_trip(client: Redis, packed: bytes, replies: int = 1) -> list[Any]:
    """Send ``packed`` (``replies`` commands) and read every reply; an error reply is returned as
    its exception, in its place, so the connection stays in step."""
    # The pool checks a connection before lending it and drops it on any error but an error
    # reply, so a Redis restart costs no more than the calls made while it is down.
    pool: _LendsConnections = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(packed)
        answers: list[Any] = []
        for _ in range(replies):
            try:
                answers.append(await connection.read_response())
            except ResponseError as exc:
                answers.append(exc)
        return answers
    finally:
        await pool.release(connection)


class Scripts:
    """The backend's scripts by name, with their SHA1 digests computed locally."""

    def __init__(self) -> None:
        folder = resources.files(__package__)
        self._sources = {name: folder.joinpath(f"{name}.lua").read_text("utf-8") for name in NAMES}
        self._shas = {
            name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            for name, source in self._sources.items()
        }

    async def load(self, client: Redis) -> None:
        """Load every script in one round trip."""
        pipeline = client.pipeline(transaction=False)
        for source in self._sources.values():
            pipeline.execute_command("SCRIPT LOAD", source)
        await pipeline.execute()

    def _pack(self, name: str, args: Sequence[Arg], more: Packed) -> bytes:
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$1\r\n0\r\n" % (
            len(args) + more.count + 3,
            self._shas[name].encode(),
        )
        return b"".join((head, *map(bulk, args), more.data))

    async def run(self, client: Redis, name: str, args: Sequence[Arg], more: Packed = NOTHING) -> Any:
        """Run script ``name`` with ``args`` then ``more`` as ARGV (no KEYS: the scripts build
        their keys from the prefix); an error reply is raised."""
        [reply] = await self.run_many(client, [(name, args, more)])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def run_many(self, client: Redis, calls: Sequence[tuple[str, Sequence[Arg], Packed]]) -> list[Any]:
        """Run several scripts in one round trip, in order, each atomic by itself (not together).

        An error reply comes back as its ``ResponseError``, in its place: the caller decides what
        the other calls' replies are worth when one failed."""
        replies = await _round_trip(client, b"".join(self._pack(*call) for call in calls), len(calls))
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                # it did not run: load it and run it now, after the calls that did
                name, args, more = calls[index]
                await command(client, "SCRIPT LOAD", self._sources[name])
                [replies[index]] = await _round_trip(client, self._pack(name, args, more))
        return replies
