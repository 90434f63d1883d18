"""Who may do what over HTTP: bearer tokens with roles, and the dashboard's cookie with CSRF checks.

Roles rank ``read`` < ``operate`` < ``admin``:

- ``read``: every GET (lists, status, metrics, the dashboard's pages);
- ``operate``: what an on-call operator does (pause/resume, cancel, redrive, approve/reject);
- ``admin``: what changes data for good or starts work (purge, enqueue, emit, commands).

With no token configured every caller is ``admin`` and ``conveyor serve`` refuses any
address but loopback. A browser holds its token in an HttpOnly, SameSite=Strict cookie; every
mutating request that does not carry ``Authorization: Bearer`` must carry the CSRF token (a form
field ``csrf`` or the ``X-CSRF-Token`` header) and must not come from another site.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conveyor.model.errors import ConfigurationError
from conveyor.server.problems import Problem

COOKIE = "conveyor_token"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(enum.StrEnum):
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.READ: 0, Role.OPERATE: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a name for the audit log (``token:<first 6 chars of its hash>``) and a role."""

    name: str
    role: Role
    via_cookie: bool = False


def parse_tokens(tokens: Mapping[str, str | Role] | None) -> dict[str, Role]:
    """``{token: role}`` checked: a token of at least 16 characters, a known role."""
    parsed: dict[str, Role] = {}
    for token, role in (tokens or {}).items():
        if len(token) < 16:
            raise ConfigurationError("an API token must be at least 16 characters long")
        try:
            parsed[token] = Role(role)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ConfigurationError(f"unknown API role {role!r}; known: {known}") from None
    return parsed


def token_name(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Auth:
    """The tokens and the CSRF secret of one server."""

    def __init__(
        self, tokens: Mapping[str, str | Role] | None = None, *, secret: bytes | None = None
    ) -> None:
        self.tokens = parse_tokens(tokens)
        self._secret = secret or secrets.token_bytes(32)
        self._bearer = HTTPBearer(auto_error=False)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def principal_for(self, token: str | None, *, via_cookie: bool = False) -> Principal | None:
        if not self.enabled:
            return Principal("anonymous", Role.ADMIN, via_cookie)
        if token is None:
            return None
        for known, role in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return Principal(token_name(known), role, via_cookie)
        return None

    def csrf_token(self, principal: Principal) -> str:
        """The token a page of this principal's carries in its forms and htmx requests."""
        return hmac.new(self._secret, principal.name.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, principal: Principal, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.csrf_token(principal), given)

    async def principal(self, request: Request) -> Principal:
        """The caller of ``request``; raises a 401 problem when a token is needed and missing or wrong."""
        cached = request.scope.get("conveyor.principal")
        if isinstance(cached, Principal):
            return cached
        credentials: HTTPAuthorizationCredentials | None = await self._bearer(request)
        if credentials is not None:
            found = self.principal_for(credentials.credentials)
        else:
            found = self.principal_for(request.cookies.get(COOKIE), via_cookie=True)
        if found is None:
            raise Problem(
                401,
                "Unauthorized",
                "give an API token: the header 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method not in SAFE_METHODS and credentials is None:
            await self._refuse_forged(request, found)
        request.scope["conveyor.principal"] = found
        return found

    async def _refuse_forged(self, request: Request, principal: Principal) -> None:
        """A mutating request without a bearer token: the browser's, so it must prove its page."""
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site in ("cross-site", "same-site"):
            raise Problem(403, "Forbidden", "cross-site requests may not change anything")
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                raise Problem(403, "Forbidden", f"requests from {origin} may not change anything")
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            field = form.get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        from_page = self.enabled or given is not None or origin is not None
        if principal.via_cookie and from_page and not self.check_csrf(principal, given):
            raise Problem(403, "Forbidden", "the CSRF token is missing or wrong: reload the page")

    def require(self, role: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
        """A FastAPI dependency: the caller, who must hold at least ``role``."""

        async def dependency(request: Request) -> Principal:
            principal = await self.principal(request)
            if not principal.role.allows(role):
                raise Problem(
                    403, "Forbidden", f"this needs the {role.value!r} role; yours is {principal.role.value!r}"
                )
            return principal

        return dependency
