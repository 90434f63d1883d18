"""Live updates: ``/events`` streams a page's changing part as server-sent events.

Each event's data is JSON ``{element id: its new HTML}``; ``static/live.js`` (a few lines, no
build) puts it in place. A fragment is sent only when it changed (a comment keeps the connection
checked in between); after :attr:`Live.events` ticks the stream ends and the browser's
EventSource reconnects by itself, so every connection is bounded. A client that goes away ends
its stream at the next write.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from conveyor.server.auth import Principal, Role
from conveyor.server.dashboard.overview import overview
from conveyor.server.dashboard.render import Dashboard
from conveyor.server.dashboard.workflows import instance


def routes(dashboard: Dashboard) -> APIRouter:
    ui = APIRouter()
    Reader = Annotated[Principal, Depends(dashboard.auth.require(Role.READ))]

    @ui.get("/events")
    async def events(
        request: Request,
        principal: Reader,
        view: Literal["overview", "workflow"] = "overview",
        id: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> StreamingResponse:
        app = await dashboard.app()

        async def render() -> dict[str, str]:
            if view == "workflow" and id is not None:
                context = await instance(app, id)
                return {"instance-live": dashboard.fragment(request, principal, "_instance.html", context)}
            context = await overview(app)
            return {"overview-live": dashboard.fragment(request, principal, "_overview.html", context)}

        async def stream() -> AsyncIterator[bytes]:
            dashboard.streams += 1
            try:
                yield f"retry: {int(dashboard.live.interval * 1000)}\n\n".encode()
                last: dict[str, str] | None = None
                for tick in range(dashboard.live.events):
                    if tick:
                        await asyncio.sleep(dashboard.live.interval)
                    current = await render()
                    if current != last:
                        yield b"data: " + orjson.dumps(current) + b"\n\n"
                        last = current
                    else:
                        yield b": unchanged\n\n"
            finally:
                dashboard.streams -= 1

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return ui
