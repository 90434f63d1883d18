"""Dead letters: filter them, inspect one (its body and traceback), and redrive or purge the ones
ticked or every one matching the filter, after a page that shows how many it will be."""

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from conveyor.app import App
from conveyor.operations.dead_letters import DeadLetters
from conveyor.server import audit
from conveyor.server.auth import Principal, Role
from conveyor.server.dashboard.render import Dashboard, back_to
from conveyor.server.dashboard.workflows import RANGES, cursor, uncursor
from conveyor.server.problems import Problem
from conveyor.server.schemas import DeadLetterView

PAGE = 50
NEEDS: dict[str, Role] = {"redrive": Role.OPERATE, "purge": Role.ADMIN}
"""The role each action needs (as over the API)."""

Text = Annotated[str, Query(max_length=1000)]
Field = Annotated[str, Form(max_length=1000)]
Action = Literal["redrive", "purge"]
Choice = Literal["redrive:selected", "redrive:matching", "purge:selected", "purge:matching"]
"""What a button of the list asks: an action, on the ticked dead letters or all matching."""


@dataclass(frozen=True, slots=True)
class Filter:
    """The list's filter, as its page's fields ("" for a field not set)."""

    queue: str = ""
    error_type: str = ""
    text: str = ""
    within: str = ""

    def matching(self, app: App) -> DeadLetters:
        since = app.clock.now() - RANGES[self.within] if self.within in RANGES else None
        return app.dead_letters(
            self.queue or None, error_type=self.error_type or None, since=since, text=self.text or None
        )

    @property
    def fields(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def posted_filter(queue: Field = "", error_type: Field = "", text: Field = "", within: Field = "") -> Filter:
    """The filter an action's form carries along (as hidden fields)."""
    return Filter(queue, error_type, text, within)


Posted = Annotated[Filter, Depends(posted_filter)]


def routes(dashboard: Dashboard) -> APIRouter:
    ui = APIRouter()
    auth = dashboard.auth
    Reader = Annotated[Principal, Depends(auth.require(Role.READ))]
    Operator = Annotated[Principal, Depends(auth.require(Role.OPERATE))]

    def allowed(principal: Principal, action: str) -> None:
        if not principal.role.allows(NEEDS[action]):
            raise Problem(
                403,
                "Forbidden",
                f"{action} needs the {NEEDS[action].value!r} role; yours is {principal.role.value!r}",
            )

    @ui.get("/dead-letters", response_class=HTMLResponse)
    async def dead_letter_list(
        request: Request,
        principal: Reader,
        queue: Text = "",
        error_type: Text = "",
        text: Text = "",
        within: Literal["", "15m", "1h", "24h", "7d"] = "",
        before: Annotated[str, Query(max_length=2000)] = "",
        done: Text = "",
        limit: Annotated[int, Query(ge=1, le=500)] = PAGE,
    ) -> HTMLResponse:
        app = await dashboard.app()
        shown = Filter(queue, error_type, text, within)
        where = shown.matching(app)
        found = await where.page(limit, uncursor(before))
        last = found[-1] if len(found) == limit else None
        context = {
            "items": [DeadLetterView.of(d) for d in found],  # full: the body names the workflow
            "count": await where.count(),
            "older": None if last is None else cursor(last.failed_at, last.id),
            "filters": shown.fields,
            "queues": await app.queues.names(),
            "ranges": list(RANGES),
            "done": done,
            "first_page": not before,
        }
        return dashboard.page(request, principal, "dead_letters.html", context)

    @ui.get("/dead-letters/{dead_id:path}", response_class=HTMLResponse)
    async def dead_letter_page(
        request: Request, principal: Reader, dead_id: Annotated[str, Path(max_length=1000)]
    ) -> HTMLResponse:
        app = await dashboard.app()
        found = await app.dead_letters().get(dead_id)
        if found is None:
            raise Problem(404, "Not Found", f"no dead letter {dead_id!r} (redriven or purged?)")
        return dashboard.page(request, principal, "dead_letter.html", {"dead": DeadLetterView.of(found)})

    @ui.post("/dead-letters/confirm", response_class=HTMLResponse)
    async def confirm(
        request: Request,
        principal: Operator,
        choice: Annotated[Choice, Form()],
        posted: Posted,
        ids: Annotated[list[str] | None, Form(max_length=10_000)] = None,
    ) -> HTMLResponse:
        """Nothing happens yet: the page says what will, and how many, before a second press."""
        action, _, scope = choice.partition(":")
        allowed(principal, action)
        app = await dashboard.app()
        chosen = ids or []
        if scope == "selected" and not chosen:
            raise Problem(422, "Unprocessable Content", "tick the dead letters to act on first")
        count = len(chosen) if scope == "selected" else await posted.matching(app).count()
        context: dict[str, Any] = {
            "action": action,
            "scope": scope,
            "ids": chosen if scope == "selected" else [],
            "count": count,
            "filters": posted.fields,
            "unfiltered": scope == "matching" and not any(posted.fields.values()),
        }
        return dashboard.page(request, principal, "confirm.html", context)

    @ui.post("/dead-letters/{action}")
    async def act(
        request: Request,
        principal: Operator,
        action: Action,
        scope: Annotated[Literal["selected", "matching"], Form()],
        posted: Posted,
        ids: Annotated[list[str] | None, Form(max_length=10_000)] = None,
    ) -> RedirectResponse:
        allowed(principal, action)
        app = await dashboard.app()
        where = posted.matching(app)
        chosen = (ids or []) if scope == "selected" else None
        if action == "redrive":
            count = await where.redrive(chosen)
        else:
            count = await where.purge(chosen)
        filters = posted.fields
        described = {key: value for key, value in filters.items() if value}
        audit.record(principal, action, "dead-letters", count=count, ids=chosen, via="dashboard", **described)
        verb = "redrove" if action == "redrive" else "purged"
        return back_to(request, "/dead-letters", **filters, done=f"{verb} {count}")

    return ui
