"""The ``conveyor`` command, against a real SQLite file."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from conveyor.cli import main

APP_SOURCE = """
from typing import Any
from conveyor import App, Context, Lifecycle, PermanentError, Service

svc = Service("shop")

@svc.queue_worker("refuse", lifecycle=Lifecycle(max_attempts=1))
async def refuse(ctx: Context, job: dict[str, Any]) -> None:
    raise PermanentError("refused on purpose")

@svc.queue_worker("accept", emits=["accepted"])
async def accept(ctx: Context, job: dict[str, Any]) -> None:
    await ctx.emit("accepted", job)

app = App([svc], backend="sqlite:///{db}")
"""


@pytest.fixture
def app_module(tmp_path: Path) -> Iterator[str]:
    name = f"cli_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE.replace("{db}", str(tmp_path / "cli.db")))
    sys.path.insert(0, str(tmp_path))
    try:
        yield f"{name}:app"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_enqueue_then_dead_letters_list_redrive_and_purge(app_module: str) -> None:
    job_id = invoke("enqueue", app_module, "refuse", '{"n": 1}', "--correlation-id", "wf-1").strip()
    assert job_id

    import importlib

    app = importlib.import_module(app_module.split(":", maxsplit=1)[0]).app
    from conveyor.testing import running, wait_until

    async def work() -> None:
        async with app, running(app):
            await wait_until(lambda: app.dead_letters("refuse").list())

    asyncio.run(work())
    listed = orjson.loads(invoke("dlq", app_module, "list", "--json"))
    assert [(d["id"], d["queue"], d["error"]) for d in listed] == [(job_id, "refuse", "refused on purpose")]
    assert listed[0]["message"]["payload"] == {"n": 1}
    assert "redriven: 1" in invoke("dlq", app_module, "redrive", "--queue", "refuse")
    assert "no dead letters" in invoke("dlq", app_module, "list")
    asyncio.run(work())
    assert "purged: 1" in invoke("dlq", app_module, "purge", job_id)
    status = orjson.loads(invoke("status", app_module, "wf-1", "--json"))
    assert status["state"] == "failed" and status["last_error"] == "PermanentError: refused on purpose"
    text = invoke("status", app_module, "wf-1")
    assert "wf-1" in text and "refuse" in text
    listed = orjson.loads(invoke("workflows", app_module, "--state", "failed", "--json"))
    assert [(w["id"], w["state"]) for w in listed] == [("wf-1", "failed")]
    assert orjson.loads(invoke("workflows", app_module, "--state", "completed", "--json")) == []
    assert "wf-1" in invoke("workflows", app_module)


def test_bad_payload_and_bad_app_give_clear_errors(app_module: str) -> None:
    result = CliRunner().invoke(main, ["enqueue", app_module, "accept", "{not json"])
    assert result.exit_code != 0 and "payload is not JSON" in result.output
    result = CliRunner().invoke(main, ["enqueue", "no_such_module:app", "accept"])
    assert result.exit_code != 0 and "cannot import 'no_such_module'" in result.output
    result = CliRunner().invoke(main, ["enqueue", "conveyor:Service", "accept"])
    assert result.exit_code != 0 and "not a conveyor App" in result.output


def test_graph_prints_mermaid_and_warns_about_unconsumed_events(app_module: str) -> None:
    result = CliRunner().invoke(main, ["graph", app_module])
    assert result.exit_code == 0
    assert result.stdout.startswith("flowchart TD") and "queue_accept --> event_accepted" in result.stdout
    assert "event 'accepted' is emitted but no subscription consumes it" in result.stderr


def test_graph_of_the_seed_example_matches_the_seed_diagram() -> None:
    result = CliRunner().invoke(main, ["graph", "examples.order_fulfillment.app:app"])
    assert result.exit_code == 0, result.output
    expected = textwrap.dedent(
        """\
        event_order_placed --> queue_validate_inventory
        queue_validate_inventory --> event_inventory_reserved
        queue_validate_inventory --> event_inventory_unavailable
        event_inventory_unavailable --> queue_notify_backorder
        event_inventory_reserved --> queue_process_payment
        queue_process_payment --> event_payment_processed
        queue_process_payment -. dead letter .-> event_payment_failed
        event_payment_failed --> queue_handle_payment_failure
        event_payment_processed --> queue_create_shipment
        queue_create_shipment --> event_shipment_created
        event_shipment_created --> queue_send_confirmation"""
    ).splitlines()
    edges = {line.strip() for line in result.stdout.splitlines()}
    assert set(expected) <= edges
    assert result.stderr == ""


def test_demo_runs_the_seed_example_on_sqlite_and_prints_every_path(tmp_path: Path) -> None:
    output = invoke("demo", "--orders", "10", "--dir", str(tmp_path))
    assert "10/10" in output
    assert "7 fulfilled, 1 backordered, 2 payment failures compensated" in output.replace("\n", " ")
    assert output.count("order_placed") == 10
    assert (tmp_path / "demo.db").exists()
