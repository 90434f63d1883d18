"""The HTTP API's routes."""

from __future__ import annotations

from fastapi import APIRouter

from conveyor.server.auth import Auth
from conveyor.server.connection import Connection


def router(connection: Connection, auth: Auth) -> APIRouter:
    return APIRouter()
