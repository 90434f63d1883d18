"""The operator's commands (queues, pause, resume, leases, job, cancel, workers, dlq by filter)
against a real SQLite file."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from conveyor.cli import main
from conveyor.testing import running, wait_until

try:
    from tests.e2e.test_cli import importable
except ModuleNotFoundError:
    from test_cli import importable  # type: ignore[no-redef,import-not-found,unused-ignore]

APP_SOURCE = """
from typing import Any
from conveyor import App, Context, Lifecycle, PermanentError, Service

svc = Service("shop")

@svc.queue_worker("charge", lifecycle=Lifecycle(max_attempts=1))
async def charge(ctx: Context, job: dict[str, Any]) -> None:
    if job.get("declined"):
        raise PermanentError(f"card of order {job['order']} DECLINED")
    raise KeyError(f"order {job['order']} is missing")

@svc.queue_worker("ship")
async def ship(ctx: Context, job: dict[str, Any]) -> None:
    pass

app = App([svc], backend="sqlite:///{db}")
"""


@pytest.fixture
def app_module(tmp_path: Path) -> Iterator[str]:
    name = f"ops_app_{tmp_path.name.replace('-', '_')}"
    with importable(tmp_path, name, APP_SOURCE.replace("{db}", str(tmp_path / "ops.db"))) as spec:
        yield spec


def cli(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def _app(spec: str) -> Any:
    return importlib.import_module(spec.split(":", maxsplit=1)[0]).app


def test_pause_queues_resume_and_every_listing_in_json(app_module: str) -> None:
    long_id = "order-" + "x" * 60  # an id wider than any terminal column: never cut
    assert cli("pause", app_module, "ship").output.strip() == "ship: paused"
    assert "already paused" in cli("pause", app_module, "ship").output
    cli("enqueue", app_module, "ship", '{"n": 1}', "--priority", "3", "--key", long_id)
    [ship] = [q for q in orjson.loads(cli("queues", app_module, "--json").output) if q["queue"] == "ship"]
    assert ship["paused"] is True and ship["ready"] == 1
    assert "paused" in cli("queues", app_module).output
    found = orjson.loads(cli("job", app_module, "--queue", "ship", "--key", long_id, "--json").output)
    assert found["state"] == "ready" and found["priority"] == 3 and found["idempotency_key"] == long_id
    assert long_id in cli("job", app_module, found["id"]).output.replace("\n", "")
    assert "no job" in cli("job", app_module, "missing-id", code=1).output
    assert cli("resume", app_module, "ship").output.strip() == "ship: resumed"
    assert orjson.loads(cli("leases", app_module, "--json").output) == []
    assert orjson.loads(cli("workers", app_module, "--json").output) == []
    result = CliRunner().invoke(main, ["pause", app_module, "shp"])
    assert result.exit_code == 2 and "did you mean 'ship'" in result.output


def test_cancel_a_waiting_job_and_an_unknown_one(app_module: str) -> None:
    job_id = cli("enqueue", app_module, "ship", "{}", "--delay", "3600").output.strip()
    assert cli("cancel", app_module, job_id, "--by", "alice").output.strip() == f"{job_id}: cancelled"
    shown = orjson.loads(cli("job", app_module, job_id, "--json").output)
    assert shown["state"] == "cancelled"
    output = cli("cancel", app_module, job_id, "nope", code=1).output
    assert "already finished" in output and "nope: no such job" in output


def test_dead_letters_by_filter_dry_run_redrive_and_purge(app_module: str) -> None:
    for order in range(3):
        cli("enqueue", app_module, "charge", orjson.dumps({"order": order, "declined": True}).decode())
    cli("enqueue", app_module, "charge", '{"order": 9}')
    app = _app(app_module)

    async def work() -> None:
        async with app, running(app):
            await wait_until(lambda: app.dead_letters().count(), message="dead letters")
            await wait_until(lambda: _dead(app, 4))

    asyncio.run(work())
    listed = orjson.loads(cli("dlq", app_module, "list", "--error", "PermanentError", "--json").output)
    assert len(listed) == 3 and {d["error_type"] for d in listed} == {"conveyor.model.errors.PermanentError"}
    assert (
        len(
            orjson.loads(
                cli("dlq", app_module, "list", "--grep", "declined", "--since", "1h", "--json").output
            )
        )
        == 3
    )
    page = orjson.loads(cli("dlq", app_module, "list", "--limit", "2", "--json").output)
    rest = orjson.loads(cli("dlq", app_module, "list", "--before", page[-1]["id"], "--json").output)
    assert len(page) == 2 and len(rest) == 2 and not {d["id"] for d in page} & {d["id"] for d in rest}
    shown = cli("dlq", app_module, "show", listed[0]["id"]).output
    assert "DECLINED" in shown and "Traceback" in shown
    assert (
        "would be redriven: 3" in cli("dlq", app_module, "redrive", "--grep", "declined", "--dry-run").output
    )
    assert "purge what?" in CliRunner().invoke(main, ["dlq", app_module, "purge"]).output
    assert "redriven: 3" in cli("dlq", app_module, "redrive", "--grep", "declined", "--delay", "3600").output
    missing = cli("dlq", app_module, "redrive", "no-such-id", code=1)
    assert missing.output.strip() == "no dead letter no-such-id"
    assert "purged: 1" in cli("dlq", app_module, "purge", "--all").output
    assert orjson.loads(cli("dlq", app_module, "list", "--json").output) == []


async def _dead(app: Any, count: int) -> bool:
    return bool(await app.dead_letters().count() >= count)
