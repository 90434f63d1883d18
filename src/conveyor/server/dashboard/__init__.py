"""The dashboard: server-rendered pages with htmx (vendored), at ``/ui`` of ``conveyor serve``."""

from __future__ import annotations

from fastapi import APIRouter

from conveyor.server.auth import Auth
from conveyor.server.connection import Connection


def dashboard_router(connection: Connection, auth: Auth) -> APIRouter:
    """The dashboard's routes (relative to its prefix)."""
    return APIRouter(include_in_schema=False)
