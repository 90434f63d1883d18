"""The dashboard over httpx on every backend: the login cookie, pages that render, the workflow
filters and keyset paging, roles (a reader sees no buttons and is refused), CSRF, the confirmed
dead-letter actions, pause/resume, the audit log, and the bounded live stream."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from conveyor import App
from conveyor.operations.graph import Edge
from conveyor.server import create_app
from conveyor.server.auth import Auth
from conveyor.server.connection import Connection
from conveyor.server.dashboard import Live, dashboard_app
from conveyor.server.dashboard.graph import layout
from conveyor.testing import running, wait_until
from tests.server.live import free_port
from tests.server.shop import awaits_review, dead_charges, in_state, make_app

ADMIN, OPERATOR, READER = "admin-token-0123456789", "operator-token-0123456", "reader-token-01234567"
TOKENS = {ADMIN: "admin", OPERATOR: "operate", READER: "read"}

Served = tuple[App, httpx.AsyncClient]


@pytest.fixture
async def served(backend_url: str) -> AsyncIterator[Served]:
    app = make_app(backend_url)
    transport = httpx.ASGITransport(app=create_app(app, tokens=TOKENS))
    async with (
        app,
        running(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield app, client


async def log_in(client: httpx.AsyncClient, token: str) -> str:
    """Log ``client`` in with ``token`` (the cookie); returns the CSRF token its pages carry."""
    client.cookies.clear()
    answer = await client.post("/ui/login", data={"token": token, "next": "/ui/queues"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/queues"
    return csrf_of((await client.get("/ui/")).text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def audited(caplog: pytest.LogCaptureFixture, action: str) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if r.name == "conveyor.audit" and r.audit["action"] == action]  # type: ignore[attr-defined]


async def test_a_page_asks_for_a_token_and_the_login_sets_a_strict_http_only_cookie(served: Served) -> None:
    _, client = served
    anonymous = await client.get("/ui/workflows?state=failed")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/ui/login?next=/ui/workflows%3Fstate%3Dfailed"
    form = await client.get("/ui/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    wrong = await client.post("/ui/login", data={"token": "not-a-token-of-this-server"})
    assert wrong.status_code == 401 and "not one of this server" in wrong.text
    right = await client.post("/ui/login", data={"token": READER, "next": "https://evil.example/"})
    assert right.status_code == 303 and right.headers["location"] == "/ui/"
    cookie = right.headers["set-cookie"].lower()
    assert "conveyor_token=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/ui" in cookie
    for path in ("/ui/", "/ui/workflows", "/ui/dead-letters", "/ui/queues"):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html") and ">read<" in page.text
    assert (await client.get("/ui/static/htmx.min.js")).status_code == 200


async def test_the_overview_shows_queues_dead_letters_and_workers(served: Served) -> None:
    app, client = served
    await app.enqueue("charge", {"order_id": "d-1", "card": "0000"})
    await wait_until(lambda: dead_charges(app, 1))
    await log_in(client, READER)
    page = (await client.get("/ui/")).text
    assert 'id="total-dead">1<' in page
    assert '<tr data-queue="charge">' in page and 'href="/ui/dead-letters?queue=charge"' in page
    assert 'id="workers-alive">1<' in page
    assert "<svg" in page and "throughput per minute" in page


async def test_the_workflow_list_filters_and_pages_by_key(served: Served) -> None:
    app, client = served
    for n in range(5):
        await _place(app, f"o-{n}", "0000" if n == 3 else "4242")
    await wait_until(lambda: dead_charges(app, 1))
    await wait_until(lambda: in_state(app, "o-4", "completed"))
    await log_in(client, READER)
    completed = (await client.get("/ui/workflows", params={"state": "completed", "prefix": "o-"})).text
    assert _listed(completed) == {"o-0", "o-1", "o-2", "o-4"}
    dead = (await client.get("/ui/workflows", params={"dead": "yes"})).text
    assert _listed(dead) == {"o-3"}
    stepped = (await client.get("/ui/workflows", params={"workflow": "order", "within": "1h"})).text
    assert _listed(stepped) == {f"o-{n}" for n in range(5)}
    seen: list[str] = []
    url: str | None = "/ui/workflows?prefix=o-&limit=2"
    while url is not None:
        page = (await client.get(url)).text
        seen += sorted(_listed(page))
        older = re.search(r'id="older" href="([^"]+)"', page)
        url = older.group(1).replace("&amp;", "&") if older else None
    assert sorted(seen) == [f"o-{n}" for n in range(5)] and len(seen) == 5
    bad = await client.get("/ui/workflows", params={"state": "sleeping"})
    assert bad.status_code == 422 and "state must be one of" in bad.text
    assert (await client.get("/ui/workflows", params={"since": "yesterday"})).status_code == 422
    assert (await client.get("/ui/workflows", params={"before": "nonsense"})).status_code == 400


async def test_an_instance_page_shows_its_steps_and_graph_and_an_operator_approves(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    app, client = served
    caplog.set_level(logging.INFO, "conveyor.audit")
    await _place(app, "o-9", "0000")
    await app.enqueue("review_order", {"order_id": "r-1"}, correlation_id="r-1")
    await wait_until(lambda: dead_charges(app, 1))
    await wait_until(lambda: awaits_review(app, "r-1"))
    csrf = await log_in(client, READER)
    order = (await client.get("/ui/workflows/o-9")).text
    assert 'data-queue="charge" data-state="dead_lettered"' in order
    assert 'data-node="queue:charge" data-lit="yes"' in order
    assert "its dead letter" in order
    as_reader = (await client.get("/ui/workflows/r-1")).text
    assert "review" in as_reader and "Approve" not in as_reader and "an operator decides" in as_reader
    refused = await client.post(
        "/ui/workflows/r-1/approvals/review", data={"decision": "approve", "csrf": csrf}
    )
    assert refused.status_code == 403 and "operate" in refused.text
    csrf = await log_in(client, OPERATOR)
    assert "Approve" in (await client.get("/ui/workflows/r-1")).text
    forged = await client.post("/ui/workflows/r-1/approvals/review", data={"decision": "approve"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    decided = await client.post(
        "/ui/workflows/r-1/approvals/review", data={"decision": "approve", "note": "fine", "csrf": csrf}
    )
    assert decided.status_code == 303
    assert decided.headers["location"] == "/ui/workflows/r-1?done=review+approved"
    await wait_until(lambda: in_state(app, "r-1", "completed"))
    [entry] = audited(caplog, "approve")
    assert (
        entry["target"] == "workflow:r-1" and entry["by"].startswith("token:") and entry["role"] == "operate"
    )
    again = await client.post("/ui/workflows/r-1/approvals/review", data={"decision": "reject", "csrf": csrf})
    assert again.status_code == 409
    assert (await client.get("/ui/workflows/nobody")).status_code == 404


async def test_dead_letters_are_confirmed_with_their_count_then_redriven_and_purged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    app, client = served
    caplog.set_level(logging.INFO, "conveyor.audit")
    for n in range(3):
        await app.enqueue("charge", {"order_id": f"d-{n}", "card": "0000"}, correlation_id=f"d-{n}")
    await wait_until(lambda: dead_charges(app, 3))
    csrf = await log_in(client, OPERATOR)
    listed = (await client.get("/ui/dead-letters", params={"text": "declined"})).text
    assert 'id="dead-count">3<' in listed and "Purge" not in listed
    [one] = [d.id for d in await app.dead_letters("charge").page(1)]
    detail = (await client.get(f"/ui/dead-letters/{one}")).text
    assert "card declined" in detail and "Traceback" in detail and '"card": "0000"' in detail
    filters = {"queue": "charge", "text": "declined", "error_type": "", "within": ""}
    confirm = await client.post(
        "/ui/dead-letters/confirm", data={"choice": "redrive:matching", "csrf": csrf, **filters}
    )
    assert confirm.status_code == 200 and "Redrive 3 dead letters?" in confirm.text
    assert await app.dead_letters("charge").count() == 3  # nothing happened yet
    redriven = await client.post(
        "/ui/dead-letters/redrive", data={"scope": "selected", "ids": [one], "csrf": csrf, **filters}
    )
    assert redriven.status_code == 303 and "done=redrove+1" in redriven.headers["location"]
    [entry] = audited(caplog, "redrive")
    assert entry["count"] == 1 and entry["ids"] == [one] and entry["via"] == "dashboard"
    await wait_until(lambda: dead_charges(app, 3))  # declined again, as it must be
    purge_as_operator = await client.post(
        "/ui/dead-letters/confirm", data={"choice": "purge:matching", "csrf": csrf, **filters}
    )
    assert purge_as_operator.status_code == 403 and "admin" in purge_as_operator.text
    csrf = await log_in(client, ADMIN)
    everything = await client.post(
        "/ui/dead-letters/confirm", data={"choice": "purge:matching", "csrf": csrf}
    )
    assert "Purge 3 dead letters?" in everything.text and "<strong>Every</strong>" in everything.text
    purged = await client.post("/ui/dead-letters/purge", data={"scope": "matching", "csrf": csrf, **filters})
    assert purged.status_code == 303 and "done=purged+3" in purged.headers["location"]
    assert await app.dead_letters().count() == 0
    assert audited(caplog, "purge")[0]["count"] == 3
    nothing_ticked = await client.post(
        "/ui/dead-letters/confirm", data={"choice": "redrive:selected", "csrf": csrf}
    )
    assert nothing_ticked.status_code == 422


async def test_queues_pause_and_resume_and_a_reader_is_refused(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    app, client = served
    caplog.set_level(logging.INFO, "conveyor.audit")
    csrf = await log_in(client, READER)
    page = (await client.get("/ui/queues")).text
    assert '<tr data-queue="charge">' in page and "Pause" not in page
    refused = await client.post("/ui/queues/charge/pause", data={"csrf": csrf})
    assert refused.status_code == 403
    csrf = await log_in(client, OPERATOR)
    assert "Pause" in (await client.get("/ui/queues")).text
    paused = await client.post("/ui/queues/charge/pause", data={"csrf": csrf})
    assert paused.status_code == 303 and paused.headers["location"] == "/ui/queues?done=charge+paused"
    assert "charge" in await app.queues.paused()
    assert "Resume" in (await client.get("/ui/queues")).text
    assert (await client.post("/ui/queues/charge/resume", data={"csrf": csrf})).status_code == 303
    assert await app.queues.paused() == {}
    assert [e["target"] for e in audited(caplog, "pause")] == ["queue:charge"]
    assert (await client.post("/ui/queues/nowhere/pause", data={"csrf": csrf})).status_code == 404


async def test_a_form_from_another_site_is_refused_even_with_the_token(served: Served) -> None:
    _, client = served
    csrf = await log_in(client, ADMIN)
    evil = await client.post(
        "/ui/queues/charge/pause", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    cross = await client.post(
        "/ui/queues/charge/pause", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403
    wrong = await client.post("/ui/queues/charge/pause", data={"csrf": "0" * 64})
    assert wrong.status_code == 403
    logged_out = await client.post("/ui/logout", data={"csrf": csrf})
    assert logged_out.status_code == 303 and 'conveyor_token=""' in logged_out.headers["set-cookie"]


async def test_the_live_stream_sends_fragments_and_ends_after_its_ticks(backend_url: str) -> None:
    app = make_app(backend_url)
    ui = dashboard_app(Connection(app), Auth(TOKENS), live=Live(interval=0.01, events=3))
    transport = httpx.ASGITransport(app=ui)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await app.enqueue("review_order", {"order_id": "r-2"}, correlation_id="r-2")
        headers = {"Authorization": f"Bearer {READER}"}
        answer = await client.get("/events", params={"view": "overview"}, headers=headers)
        assert answer.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in answer.text.split("\n\n") if f]
        assert frames[0].startswith("retry: ")
        ticks = frames[1:]
        assert len(ticks) == 3  # bounded: then the browser reconnects
        first = orjson.loads(ticks[0].removeprefix("data: "))
        assert '<tr data-queue="review_order">' in first["overview-live"]
        assert all(t == ": unchanged" or t.startswith("data: ") for t in ticks[1:])
        instance = await client.get("/events", params={"view": "workflow", "id": "r-2"}, headers=headers)
        fragment = orjson.loads(instance.text.split("\n\n")[1].removeprefix("data: "))["instance-live"]
        assert "r-2" in fragment and 'data-queue="review_order"' in fragment
        assert (await client.get("/events")).status_code == 303  # no token: to the login page


async def test_with_no_token_configured_the_dashboard_needs_no_login_but_still_a_csrf_token(
    tmp_path: Any,
) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'open.db'}")
    transport = httpx.ASGITransport(app=create_app(app))
    async with app, httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/ui/login")).headers["location"] == "/ui/"
        page = await client.get("/ui/queues")
        assert page.status_code == 200 and "Log out" not in page.text
        csrf = csrf_of(page.text)
        headers = {"Origin": "http://testserver"}
        assert (await client.post("/ui/queues/charge/pause", headers=headers)).status_code == 403
        paused = await client.post("/ui/queues/charge/pause", data={"csrf": csrf}, headers=headers)
        assert paused.status_code == 303 and "charge" in await app.queues.paused()


async def _place(app: App, order_id: str, card: str) -> None:
    await app.emit("placed", {"order_id": order_id, "card": card}, correlation_id=order_id)


def _listed(page: str) -> set[str]:
    return set(re.findall(r'<tr data-id="([^"]+)">', page))


async def test_a_live_stream_ends_when_its_browser_goes_away(tmp_path: Any) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'live.db'}")
    ui = dashboard_app(Connection(app), Auth(TOKENS), live=Live(interval=0.05, events=100_000))
    port = free_port()
    config = uvicorn.Config(ui, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started)
        async with app, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            headers = {"Authorization": f"Bearer {READER}"}
            async with client.stream("GET", "/events", headers=headers) as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("data: "):
                        break
                assert ui.state.dashboard.streams == 1
            await wait_until(lambda: ui.state.dashboard.streams == 0)
    finally:
        server.should_exit = True
        await serving


def test_the_graph_layout_puts_each_node_below_where_work_reaches_it_and_survives_cycles() -> None:
    chain = [
        Edge(("command", "place"), ("event", "placed")),
        Edge(("event", "placed"), ("queue", "charge")),
        Edge(("queue", "charge"), ("event", "retry_me"), "dead letter"),
        Edge(("event", "retry_me"), ("queue", "charge")),  # back up: a cycle
        Edge(("event", "loop_a"), ("queue", "loop_b")),  # a cycle nothing leads into
        Edge(("queue", "loop_b"), ("event", "loop_a")),
    ]
    drawn = layout(chain, nodes=[("queue", "lonely")], visited={("event", "placed"), ("queue", "charge")})
    rows = {(b.kind, b.name): b.y for b in drawn.boxes}
    assert len(rows) == 7 and ("queue", "lonely") in rows
    assert rows[("command", "place")] < rows[("event", "placed")] < rows[("queue", "charge")]
    assert rows[("queue", "charge")] < rows[("event", "retry_me")]
    assert [a.lit for a in drawn.arrows] == [False, True, False, False, False, False]
    assert drawn.arrows[2].dead_letter and not drawn.arrows[1].dead_letter
    boxes_by_row: dict[float, list[Any]] = {}
    for box in drawn.boxes:
        boxes_by_row.setdefault(box.y, []).append(box)
    for same_row in boxes_by_row.values():  # no two boxes of a row overlap
        same_row.sort(key=lambda b: b.x)
        assert all(a.x + a.width <= b.x for a, b in itertools.pairwise(same_row))


async def test_mounted_in_a_users_app_its_links_and_cookie_keep_the_mount_path() -> None:
    app = make_app("memory://")
    outer = FastAPI()
    outer.mount("/conveyor", create_app(app, tokens=TOKENS))
    transport = httpx.ASGITransport(app=outer)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        asked = await client.get("/conveyor/ui/queues")
        assert asked.headers["location"] == "/conveyor/ui/login?next=/conveyor/ui/queues"
        login = await client.post(
            "/conveyor/ui/login", data={"token": OPERATOR, "next": "/conveyor/ui/queues"}
        )
        assert login.headers["location"] == "/conveyor/ui/queues"
        assert "path=/conveyor/ui" in login.headers["set-cookie"].lower()
        page = (await client.get("/conveyor/ui/queues")).text
        links = set(re.findall(r'(?:href|action|src)="(/[^"]*)"', page))
        assert links and all(link.startswith("/conveyor/ui/") for link in links)
        paused = await client.post("/conveyor/ui/queues/charge/pause", data={"csrf": csrf_of(page)})
        assert paused.headers["location"] == "/conveyor/ui/queues?done=charge+paused"
