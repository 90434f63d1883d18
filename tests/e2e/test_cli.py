"""The ``conveyor`` command, against a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from conveyor.cli import main

try:
    from tests.conftest import drop, fresh_url, require_server
except ModuleNotFoundError:
    from conftest import drop, fresh_url, require_server  # type: ignore[no-redef,import-not-found,unused-ignore]

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


@contextlib.contextmanager
def importable(directory: Path, name: str, source: str) -> Iterator[str]:
    """Module ``name`` of ``source``, importable from ``directory`` in the block: its APP spec."""
    (directory / f"{name}.py").write_text(source)
    sys.path.insert(0, str(directory))
    try:
        yield f"{name}:app"
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop(name, None)


@pytest.fixture
def app_module(tmp_path: Path) -> Iterator[str]:
    name = f"cli_app_{tmp_path.name.replace('-', '_')}"
    with importable(tmp_path, name, APP_SOURCE.replace("{db}", str(tmp_path / "cli.db"))) as spec:
        yield spec


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


def test_workflows_leaves_schedule_ticks_out_unless_asked(app_module: str) -> None:
    tick = "schedule:nightly:2027-01-15T02:00:00+00:00"
    for instance in ("order-1", tick):
        invoke("enqueue", app_module, "accept", "{}", "--correlation-id", instance)
    listed = orjson.loads(invoke("workflows", app_module, "--json"))
    assert [w["id"] for w in listed] == ["order-1"]
    listed = orjson.loads(invoke("workflows", app_module, "--schedules", "--json"))
    assert {w["id"] for w in listed} == {"order-1", tick}


def test_every_workflow_state_has_a_style() -> None:
    from conveyor.cli.common import STATE_STYLE
    from conveyor.operations.status import STATES

    assert set(STATE_STYLE) == set(STATES)


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


# misuse and bad input: one line, the right exit code, never a traceback unless asked for


def test_enqueue_to_an_undeclared_queue_exits_2_and_external_enqueues_show_in_stats_and_health(
    app_module: str,
) -> None:
    refused = CliRunner().invoke(main, ["enqueue", app_module, "acept", "{}"])
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.count("\n") == 1 and "did you mean 'accept'" in refused.stderr
    assert "external" in refused.stderr and refused.stdout == ""
    job_id = invoke("enqueue", app_module, "billing.charge", "{}", "--external").strip()
    assert job_id
    table = invoke("stats", app_module)
    rows = [line for line in table.splitlines() if "undeclared" in line or "billing.charge" in line]
    assert len(rows) <= 2 and "billing.charge" in rows[0] and "(undeclared)" in " ".join(rows)  # may wrap
    assert table.count("(undeclared)") == 1
    health = CliRunner().invoke(main, ["health", app_module, "--json"])
    assert health.exit_code == 1, health.output
    report = orjson.loads(health.stdout)
    assert report["status"] == "warn" and report["undeclared_queues"] == ["billing.charge"]
    assert report["queues"]["billing.charge"]["ready"] == 1
    assert report["problems"][0].startswith("billing.charge: 1 job(s) in a queue no service")


STORED = ["sqlite", "redis", "postgres", "nats"]


@pytest.fixture(params=STORED)
def stored_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An app module on a fresh store of each backend that keeps its data between commands."""
    url = fresh_url(request.param, tmp_path)
    name = f"cli_stored_{request.param}_{tmp_path.name.replace('-', '_')}"
    try:
        with importable(tmp_path, name, APP_SOURCE.replace('"sqlite:///{db}"', repr(url))) as spec:
            yield spec
    finally:
        drop(url)


BODIES = {
    "broken-json": b'{"id": "x", broken',
    "binary": b"\xff\xfe\x00 not text",
    "text": b"plain text\twith a tab",
    "json-array": b"[1, 2]",
}


def test_dlq_list_shows_bodies_that_are_not_json_losslessly(stored_app: str) -> None:
    import base64
    import importlib

    from conveyor.ports import Commit, Effects, ErrorInfo, NewJob, Outcome, Settlement

    app = importlib.import_module(stored_app.split(":", maxsplit=1)[0]).app
    error = ErrorInfo("UndecodableMessageError", "closing tag [/] and [bold]kept[/bold]")

    async def bury() -> None:
        async with app:
            now = app.clock.now()
            jobs = [NewJob(name, "refuse", body, now, now) for name, body in BODIES.items()]
            await app.backend.commit([Commit(effects=Effects(jobs=jobs))], now)
            leased = await app.backend.lease({"refuse": 30.0}, 10, now)
            dead = [Commit(Settlement(j.id, j.token, Outcome.DEAD, error=error)) for j in leased]
            await app.backend.commit(dead, now)

    asyncio.run(bury())
    listed = {d["id"]: d for d in orjson.loads(invoke("dlq", stored_app, "list", "--json"))}
    assert listed["broken-json"]["body_text"] == BODIES["broken-json"].decode()
    assert base64.b64decode(listed["binary"]["body_base64"]) == BODIES["binary"]
    assert listed["text"]["body_text"] == "plain text\twith a tab"
    assert listed["json-array"]["message"] == [1, 2]
    assert all(len({"message", "body_text", "body_base64"} & d.keys()) == 1 for d in listed.values())
    table = CliRunner(env={"COLUMNS": "400"}).invoke(main, ["dlq", stored_app, "list"])
    assert table.exit_code == 0, table.output
    assert "closing tag [/] and [bold]kept[/bold]" in table.stdout


def one_service_app(backend: str) -> str:
    """The source of an app of one empty service on ``backend``."""
    return f"from conveyor import App, Service\napp = App([Service('svc')], backend={backend!r})\n"


@pytest.fixture
def bad_app(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``bad_app(url)``: the APP spec of an importable app module whose backend URL is ``url``."""
    numbers = itertools.count()
    with contextlib.ExitStack() as modules:

        def make(url: str) -> str:
            name = f"cli_bad_{tmp_path.name.replace('-', '_')}_{next(numbers)}"
            return modules.enter_context(importable(tmp_path, name, one_service_app(url)))

        yield make


def test_a_configuration_error_is_one_line_and_exit_2_in_every_command(
    bad_app: Callable[[str], str],
) -> None:
    spec = bad_app("nosuch://x")
    for command in (["stats", spec], ["enqueue", spec, "q"], ["dlq", spec, "list"], ["worker", spec]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.splitlines() == [
            "Error: ConfigurationError: unknown backend URL scheme 'nosuch' in 'nosuch://x'; known: "
            "memory://, nats://, postgres://, postgresql://, redis://, rediss://, sqlite://"
        ], command
    shown = CliRunner().invoke(main, ["--traceback", "stats", spec])
    assert shown.exit_code == 2 and "Traceback (most recent call last)" in shown.stderr
    debug = CliRunner().invoke(main, ["--log-level", "debug", "stats", spec])
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.stderr


def test_health_fails_with_exit_2_on_an_unknown_url_scheme(bad_app: Callable[[str], str]) -> None:
    result = CliRunner().invoke(main, ["health", bad_app("nosuch://x"), "--json"])
    assert result.exit_code == 2, result.output
    report = orjson.loads(result.stdout)
    assert report["status"] == "fail"
    assert report["problems"][0].startswith("configuration error: ConfigurationError: unknown backend URL")
    assert "Traceback" not in result.output


def test_a_missing_driver_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "needs_redis.py").write_text(one_service_app("redis://127.0.0.1:6379/0"))
    # redis-py "not installed": importing it fails as for a missing package
    script = "import sys; sys.modules['redis'] = None; from conveyor.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", script, "stats", "needs_redis:app"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "Error: ConfigurationError: the redis:// backend needs the 'redis' package: "
        "pip install 'conveyor[redis]'"
    ]


@pytest.mark.backend
@pytest.mark.parametrize(
    ("database", "user", "expected"),
    [
        (
            "conveyor_no_such_database",
            "root",
            'PostgreSQL database "conveyor_no_such_database" does not exist',
        ),
        ("conveyor_test", "conveyor_no_such_role", 'PostgreSQL role "conveyor_no_such_role" does not exist'),
    ],
)
def test_a_missing_postgres_database_or_role_is_a_configuration_error(
    bad_app: Callable[[str], str], database: str, user: str, expected: str
) -> None:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    spec = bad_app(f"postgresql://{user}@127.0.0.1:5432/{database}")
    result = CliRunner().invoke(main, ["stats", spec])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()  # and no pool retrying the login, logging each try
    assert line.startswith(f"Error: ConfigurationError: {expected}: create it (CREATE ")
    health = CliRunner().invoke(main, ["health", spec, "--json"])
    assert health.exit_code == 2, health.output
    assert orjson.loads(health.stdout)["problems"] == [f"configuration error: {line.removeprefix('Error: ')}"]
