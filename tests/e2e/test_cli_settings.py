"""The ``conveyor`` command's settings: --version, --backend, CONVEYOR_*, the log level, and what
read-only commands refuse."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from conveyor.cli import main

try:
    from tests.e2e.test_cli import importable
except ModuleNotFoundError:
    from test_cli import importable  # type: ignore[no-redef,import-not-found,unused-ignore]

UNCONFIGURED = """
from typing import Any
from conveyor import App, Context, Service

svc = Service("shop")

@svc.queue_worker("accept")
async def accept(ctx: Context, job: dict[str, Any]) -> None:
    pass

app = App([svc])
"""

READ_ONLY = [
    ["status", "{app}", "order-1"],
    ["workflows", "{app}"],
    ["stats", "{app}"],
    ["dlq", "{app}", "list"],
    ["dlq", "{app}", "redrive", "--all"],
    ["queues", "{app}"],
    ["workers", "{app}"],
]


@pytest.fixture
def unconfigured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An app naming no backend, imported from an empty working directory, CONVEYOR_* unset."""
    for name in [n for n in os.environ if n.startswith("CONVEYOR_") and not n.startswith("CONVEYOR_TEST")]:
        monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with importable(tmp_path, f"unconfigured_{tmp_path.name.replace('-', '_')}", UNCONFIGURED) as spec:
        yield spec


def cli(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result


def test_version_prints_the_installed_version() -> None:
    assert cli("--version").output.strip() == f"conveyor {version('conveyor')}"


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: " ".join(c[:1] + c[2:]))
def test_a_read_only_command_with_no_backend_configured_refuses_to_create_a_database(
    unconfigured: str, command: list[str]
) -> None:
    result = cli(*(part.replace("{app}", unconfigured) for part in command), code=2)
    assert "no backend configured" in result.output
    assert "--backend URL or CONVEYOR_URL" in result.output
    assert list(Path.cwd().iterdir()) == []


def test_health_with_no_backend_configured_fails_without_creating_a_database(unconfigured: str) -> None:
    result = cli("health", unconfigured, "--json", code=2)
    report = orjson.loads(result.stdout)
    assert report["status"] == "fail"
    assert "no backend configured" in report["problems"][0]
    assert list(Path.cwd().iterdir()) == []


def test_a_command_that_writes_creates_the_default_database(unconfigured: str) -> None:
    assert cli("enqueue", unconfigured, "accept", "{}").output.strip()
    assert (Path.cwd() / "conveyor.db").is_file()
    assert orjson.loads(cli("stats", unconfigured, "--json").output)[0]["ready"] == 1


def test_backend_flag_and_conveyor_url_point_every_command_at_a_database(
    unconfigured: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/chosen.db"
    cli("--backend", url, "enqueue", unconfigured, "accept", "{}", "--correlation-id", "order-1")
    assert (tmp_path / "chosen.db").is_file() and not (Path.cwd() / "conveyor.db").exists()
    monkeypatch.setenv("CONVEYOR_URL", url)
    [row] = orjson.loads(cli("stats", unconfigured, "--json").output)
    assert row == {
        "queue": "accept",
        "declared": True,
        "ready": 1,
        "scheduled": 0,
        "leased": 0,
        "dead": 0,
        "oldest_ready_at": row["oldest_ready_at"],
    }
    assert isinstance(row["oldest_ready_at"], float)
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path}/other.db")
    assert (
        orjson.loads(cli("--backend", url, "status", unconfigured, "order-1", "--json").output)["id"]
        == "order-1"
    )


def test_a_missing_sqlite_directory_is_refused_unless_create_dirs_is_given(
    unconfigured: str, tmp_path: Path
) -> None:
    missing = f"sqlite:///{tmp_path}/no-such-dir/x.db"
    result = cli("--backend", missing, "enqueue", unconfigured, "accept", "{}", code=2)
    assert "does not exist" in result.output and "?create_dirs=1" in result.output
    assert not (tmp_path / "no-such-dir").exists()
    cli("--backend", f"{missing}?create_dirs=1", "enqueue", unconfigured, "accept", "{}")
    assert (tmp_path / "no-such-dir" / "x.db").is_file()


def test_status_of_an_unknown_id_exits_1_saying_so(unconfigured: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    for as_json in ([], ["--json"]):
        result = cli("--backend", url, "status", unconfigured, "no-such-order", *as_json, code=1)
        assert "no workflow instance 'no-such-order'" in result.output


def test_tables_show_long_ids_whole(unconfigured: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    long_id = "order-" + "0123456789" * 12  # wider than the 80 columns of a console that is no terminal
    cli("--backend", url, "enqueue", unconfigured, "accept", "{}", "--correlation-id", long_id)
    assert long_id in cli("--backend", url, "workflows", unconfigured).output
    assert long_id in cli("--backend", url, "status", unconfigured, long_id).output


def test_log_level_defaults_to_info_for_worker_and_warning_for_the_rest(
    unconfigured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conveyor = logging.getLogger("conveyor")
    cli("worker", "--help")  # the group's options apply before the command parses its own
    assert conveyor.level == logging.INFO
    cli("stats", "--help")
    assert conveyor.level == logging.WARNING
    cli("--log-level", "warning", "worker", "--help")
    assert conveyor.level == logging.WARNING
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "ERROR")
    cli("worker", "--help")
    assert conveyor.level == logging.ERROR
    assert "INFO for worker" in cli("--help").output


@pytest.mark.slow
def test_a_worker_logs_its_start_at_info_by_default(tmp_path: Path) -> None:
    (tmp_path / "quiet_app.py").write_text(UNCONFIGURED)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    command = [sys.executable, "-m", "conveyor.cli", "--backend", "memory://", "worker", "quiet_app:app"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        first = process.stderr.readline()  # blocks until the worker says something, or exits
        process.terminate()
        process.wait(timeout=30)
    assert "INFO" in first and "worker started" in first


def test_serve_reads_its_address_and_tokens_from_the_environment(
    unconfigured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_SERVE_HOST", "0.0.0.0")
    result = cli("--backend", "memory://", "serve", unconfigured, code=2)
    assert "refusing to serve on 0.0.0.0 with no API token" in result.output
    monkeypatch.setenv("CONVEYOR_API_TOKENS", "too-short:admin")
    result = cli("--backend", "memory://", "serve", unconfigured, code=2)
    assert "CONVEYOR_API_TOKENS" in result.output and "too-short" not in result.output
