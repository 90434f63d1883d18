"""The App behind the server, connected once."""

from __future__ import annotations

import asyncio

from conveyor.app import App


class Connection:
    """Connects the App on the first request or at start-up, whichever comes first, unless it is
    connected already (by the user's own lifespan, when the API is mounted in their app); closes
    only what it opened."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._lock = asyncio.Lock()
        self._connected = False

    async def ensure(self) -> App:
        if not self._connected and not self.app.connected:
            async with self._lock:
                if not self._connected and not self.app.connected:
                    await self.app.connect()
                    self._connected = True
        return self.app

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self.app.close()
