"""Logging in with an API token: it goes into an HttpOnly, SameSite=Strict cookie, so no script
of a page can read it and no other site's page can send it."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conveyor.server.auth import COOKIE, Principal, Role
from conveyor.server.dashboard.render import Dashboard, back_to, base

COOKIE_LIFETIME = 12 * 3600
"""Seconds a login lasts."""


def routes(dashboard: Dashboard) -> APIRouter:
    ui = APIRouter()
    auth = dashboard.auth
    Reader = Annotated[Principal, Depends(auth.require(Role.READ))]
    Next = Annotated[str, Query(max_length=2000)]

    def local(request: Request, wanted: str) -> str:
        """Where to go after the login: a path of this dashboard, never another site."""
        home = base(request) + "/"
        return wanted if wanted.startswith(home) and not wanted.startswith("//") else home

    @ui.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: Next = "") -> Response:
        if not auth.enabled:
            return RedirectResponse(local(request, next), status_code=303)
        return dashboard.page(request, None, "login.html", {"next": next, "wrong": False})

    @ui.post("/login", response_class=HTMLResponse)
    async def log_in(
        request: Request,
        token: Annotated[str, Form(max_length=1000)],
        next: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        if auth.principal_for(token.strip()) is None or not auth.enabled:
            context = {"next": next, "wrong": auth.enabled}
            return dashboard.page(request, None, "login.html", context, status=401)
        answer = RedirectResponse(local(request, next), status_code=303)
        answer.set_cookie(
            COOKIE,
            token.strip(),
            max_age=COOKIE_LIFETIME,
            path=base(request) or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer

    @ui.post("/logout")
    async def log_out(request: Request, principal: Reader) -> RedirectResponse:
        answer = back_to(request, "/login")
        answer.delete_cookie(COOKIE, path=base(request) or "/", httponly=True, samesite="strict")
        return answer

    return ui
