"""The HTTP API over httpx on every backend: commands, producing with Idempotency-Key, workflows,
queues, jobs, dead letters, auth and problem details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conveyor import App
from conveyor.server import create_app
from conveyor.testing import running, wait_until
from tests.server.shop import make_app

ADMIN, OPERATOR, READER = "admin-token-0123456789", "operator-token-0123456", "reader-token-01234567"
TOKENS = {ADMIN: "admin", OPERATOR: "operate", READER: "read"}


@pytest.fixture
async def served(backend_url: str) -> AsyncIterator[tuple[App, httpx.AsyncClient]]:
    app = make_app(backend_url)
    api = create_app(app, tokens=TOKENS)
    transport = httpx.ASGITransport(app=api)
    async with (
        app,
        running(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        yield app, client


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_typed_command_validates_its_payload_and_returns_its_result(served: Any) -> None:
    _, client = served
    answer = await client.post("/commands/quote", json={"sku": "apple", "qty": 4})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"sku": "apple", "total": 10.0}
    bad = await client.post("/commands/quote", json={"sku": "apple", "qty": 0})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    problem = bad.json()
    assert problem["status"] == 422 and "qty" in problem["detail"]
    unknown = await client.post("/commands/nope", json={})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]


async def test_the_openapi_document_describes_each_command_with_its_models(served: Any) -> None:
    _, client = served
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    operation = spec["paths"]["/commands/quote"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "Quote" in str(body)
    assert "Price" in str(operation["responses"]["200"])
    assert "/dead-letters/redrive" in spec["paths"] and "/workflows/{instance}" in spec["paths"]


async def test_enqueue_and_emit_honour_the_idempotency_key(served: Any) -> None:
    app, client = served
    first = await client.post(
        "/queues/charge/jobs", json={"payload": {"order_id": "o-1"}}, headers={"Idempotency-Key": "k-1"}
    )
    again = await client.post(
        "/queues/charge/jobs", json={"payload": {"order_id": "o-1"}}, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    emitted = await client.post(
        "/events/placed",
        json={"payload": {"order_id": "o-2"}, "correlation_id": "o-2"},
        headers={"Idempotency-Key": "e-1"},
    )
    replay = await client.post(
        "/events/placed",
        json={"payload": {"order_id": "o-2"}, "correlation_id": "o-2"},
        headers={"Idempotency-Key": "e-1"},
    )
    assert emitted.status_code == 201 and replay.status_code == 200
    assert replay.json() == {"id": emitted.json()["id"], "replayed": True}
    await wait_until(lambda: _state(app, "o-2", "completed"))
    status = await app.workflows.status("o-2")
    assert [s.queue for s in status.steps] == ["charge"]  # one delivery, not two
    unknown = await client.post("/queues/nowhere/jobs", json={"payload": {}})
    assert unknown.status_code == 404


async def test_workflows_list_filters_and_pages_and_an_instance_shows_its_steps(served: Any) -> None:
    app, client = served
    for n in range(5):
        card = "0000" if n == 3 else "4242"
        await client.post("/commands/place", json={"order_id": f"o-{n}", "card": card})
    await app.emit("placed", {"order_id": "w-1"}, correlation_id="w-1")
    await wait_until(lambda: _state(app, "w-1", "completed"))
    await wait_until(lambda: _dead(app, 1))
    everything = await _all_pages(client, "/workflows?limit=2&prefix=w-")
    assert everything == ["w-1"]
    listed = await _all_pages(client, "/workflows?limit=2")
    assert "w-1" in listed and len(listed) == len(set(listed))
    completed = (await client.get("/workflows", params={"state": "completed", "prefix": "w"})).json()
    assert [w["id"] for w in completed["items"]] == ["w-1"]
    one = (await client.get("/workflows/w-1")).json()
    assert one["state"] == "completed" and one["workflow"] == "order"
    assert one["steps"][0]["queue"] == "charge" and one["steps"][0]["state"] == "succeeded"
    assert one["path"] == ["(placed)", "charge", "(charged)"]
    missing = await client.get("/workflows/nobody")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


async def test_an_approval_is_decided_over_http_and_recorded_with_who(served: Any) -> None:
    app, client = served
    await app.enqueue("review_order", {"order_id": "r-1"}, correlation_id="r-1")
    await wait_until(lambda: _pending(app, "r-1"))
    read_only = await client.post(
        "/workflows/r-1/approvals/review", json={"approve": True}, headers=as_(READER)
    )
    assert read_only.status_code == 403 and "operate" in read_only.json()["detail"]
    decided = await client.post(
        "/workflows/r-1/approvals/review", json={"approve": True, "note": "ok"}, headers=as_(OPERATOR)
    )
    assert decided.status_code == 200, decided.text
    twice = await client.post("/workflows/r-1/approvals/review", json={"approve": False})
    assert twice.status_code == 409
    await wait_until(lambda: _state(app, "r-1", "completed"))
    history = (await client.get("/workflows/r-1")).json()["history"]
    decision = next(e for e in history if e["kind"] == "approval_decided")
    assert decision["detail"]["by"].startswith("token:")


async def test_dead_letters_are_filtered_inspected_redriven_and_purged(served: Any) -> None:
    app, client = served
    for n in range(3):
        await app.enqueue("charge", {"order_id": f"d-{n}", "card": "0000"})
    await wait_until(lambda: _dead(app, 3))
    page = (await client.get("/dead-letters", params={"queue": "charge", "limit": 2})).json()
    assert len(page["items"]) == 2 and page["next"]
    rest = (await client.get("/dead-letters", params={"queue": "charge", "before": page["next"]})).json()
    assert len(rest["items"]) == 1 and rest["next"] is None
    count = (await client.get("/dead-letters/count", params={"text": "declined"})).json()
    assert count == {"count": 3}
    dead_id = page["items"][0]["id"]
    one = (await client.get(f"/dead-letters/{dead_id}")).json()
    assert one["payload"]["card"] == "0000" and "PermanentError" in one["error"]["type"]
    assert one["error"]["traceback"]
    unguarded = await client.post("/dead-letters/purge", json={})
    assert unguarded.status_code == 422 and "all=true" in unguarded.json()["detail"]
    as_operator = await client.post("/dead-letters/purge", json={"ids": [dead_id]}, headers=as_(OPERATOR))
    assert as_operator.status_code == 403
    redriven = await client.post("/dead-letters/redrive", json={"ids": [dead_id]}, headers=as_(OPERATOR))
    assert redriven.json() == {"count": 1}
    await wait_until(lambda: _dead(app, 3))  # it fails again, as it must
    purged = await client.post("/dead-letters/purge", json={"queue": "charge", "text": "declined"})
    assert purged.json() == {"count": 3}
    assert (await client.get("/dead-letters/count")).json() == {"count": 0}
    bad_cursor = await client.get("/dead-letters", params={"before": "not-a-cursor"})
    assert bad_cursor.status_code == 400


async def test_queues_pause_resume_leases_jobs_and_workers(served: Any) -> None:
    _, client = served
    assert (await client.post("/queues/charge/pause", headers=as_(OPERATOR))).json() == {"changed": True}
    assert (await client.post("/queues/charge/pause")).json() == {"changed": False}
    job_id = (await client.post("/queues/charge/jobs", json={"payload": {"order_id": "p-1"}})).json()["id"]
    queues = {q["queue"]: q for q in (await client.get("/queues", headers=as_(READER))).json()}
    assert queues["charge"]["paused"] is True and queues["charge"]["ready"] == 1
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["state"] == "ready" and job["queue"] == "charge"
    cancelled = await client.post(f"/jobs/{job_id}/cancel", headers=as_(OPERATOR))
    assert cancelled.json() == {"outcome": "cancelled"}
    assert (await client.get(f"/jobs/{job_id}")).json()["state"] == "cancelled"
    assert (await client.get("/jobs/nothing")).status_code == 404
    assert (await client.post("/queues/charge/resume")).json() == {"changed": True}
    assert (await client.get("/queues/nowhere")).status_code == 404
    assert (await client.get("/leases")).status_code == 200
    workers = (await client.get("/workers")).json()
    assert workers and "charge" in workers[0]["queues"]


async def test_tokens_and_roles_are_required(served: Any) -> None:
    _, client = served
    anonymous = await client.get("/queues", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    wrong = await client.get("/queues", headers=as_("wrong-token-0123456789"))
    assert wrong.status_code == 401
    reader_enqueue = await client.post("/queues/charge/jobs", json={"payload": {}}, headers=as_(READER))
    assert reader_enqueue.status_code == 403
    assert (await client.get("/health/live", headers={"Authorization": ""})).json() == {"status": "ok"}
    ready = await client.get("/health/ready", headers={"Authorization": ""})
    assert ready.status_code == 200 and ready.json()["status"] in ("ok", "warn")


async def test_with_no_token_every_caller_may_act_but_not_across_sites(tmp_path: Any) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'open.db'}")
    api = create_app(app)
    transport = httpx.ASGITransport(app=api)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.post("/queues/charge/pause")).status_code == 200
        forged = await client.post("/queues/charge/resume", headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403
        cross = await client.post("/queues/charge/resume", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403


async def _all_pages(client: httpx.AsyncClient, url: str) -> list[str]:
    ids: list[str] = []
    before = None
    for _ in range(100):
        page = (await client.get(url, params={"before": before} if before else None)).json()
        ids += [w["id"] for w in page["items"]]
        before = page["next"]
        if before is None:
            return ids
    raise AssertionError("paging did not end")


async def _state(app: App, instance: str, state: str) -> bool:
    return (await app.workflows.status(instance)).state == state


async def _pending(app: App, instance: str) -> bool:
    return (await app.workflows.status(instance)).pending_approvals == ["review"]


async def _dead(app: App, count: int) -> bool:
    return await app.dead_letters("charge").count() == count
