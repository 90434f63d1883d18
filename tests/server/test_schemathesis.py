"""Property-based tests of the whole HTTP API from its OpenAPI document (schemathesis): whatever
the input, no server error, and every answer matches the schema it documents."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from conveyor.server import create_app
from conveyor.testing import running, wait_until
from tests.server.live import live_server
from tests.server.shop import make_app

ADMIN = "schemathesis-admin-token-0123"


async def _seed(url: str) -> None:
    """Workflows, a pending approval and dead letters, so list and lookup routes have data."""
    app = make_app(url)
    async with app, running(app):
        await app.invoke("place", {"order_id": "s-1", "card": "4242"})
        await app.invoke("place", {"order_id": "s-2", "card": "0000"})
        await app.enqueue("review_order", {"order_id": "s-3"}, correlation_id="s-3")
        await wait_until(lambda: _seeded(app))


async def _seeded(app: Any) -> bool:
    status = await app.workflows.status("s-3")
    return bool(status.pending_approvals) and await app.dead_letters("charge").count() == 1


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('schemathesis')) / 'api.db'}"
    asyncio.run(_seed(url))
    with live_server(make_app(url), tokens={ADMIN: "admin"}) as base:
        yield base


# The document the server serves, made here at collection (the same create_app, so the same one).
schema = schemathesis.openapi.from_dict(create_app(make_app("memory://")).openapi())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_api_never_fails_and_always_answers_as_documented(case: Any, live_url: str) -> None:
    case.call_and_validate(
        base_url=live_url,
        headers={"Authorization": f"Bearer {ADMIN}"},
        checks=[
            not_a_server_error,
            response_schema_conformance,
            content_type_conformance,
            status_code_conformance,
        ],
    )
