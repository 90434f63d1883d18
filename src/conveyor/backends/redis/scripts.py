"""The Lua scripts beside this module: loaded once with SCRIPT LOAD, run by SHA with EVALSHA.

Redis forgets loaded scripts on a restart or a ``SCRIPT FLUSH``; a ``NOSCRIPT`` reply reloads the
script and runs the call again, which is safe because a script that was not found did not run.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

NAMES = ("lease", "commit", "extend", "stats", "dead_letters", "redrive", "purge", "prune_history")


async def command(client: Redis, *args: Any) -> Any:
    """Send one command; redis-py leaves ``execute_command`` untyped, so the one ignore is here."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


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

    async def run(self, client: Redis, name: str, args: list[Any]) -> Any:
        """Run script ``name`` with ``args`` as ARGV (no KEYS: keys are built from the prefix)."""
        try:
            return await command(client, "EVALSHA", self._shas[name], 0, *args)
        except NoScriptError:
            await command(client, "SCRIPT LOAD", self._sources[name])
            return await command(client, "EVALSHA", self._shas[name], 0, *args)
