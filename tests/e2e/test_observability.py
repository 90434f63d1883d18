"""Metrics (OpenTelemetry, Prometheus endpoint), health, structured logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conveyor import App, Context, Lifecycle, Service
from conveyor.cli import main
from conveyor.observability.logging import JSONFormatter
from conveyor.operations.health import HealthThresholds
from conveyor.testing import running, wait_until


def _points(reader: InMemoryMetricReader) -> dict[tuple[str, str], Any]:
    data = reader.get_metrics_data()
    points: dict[tuple[str, str], Any] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    queue = str(point.attributes.get("messaging.destination.name", ""))
                    points[(metric.name, queue)] = point
    return points


async def test_counters_and_duration_follow_the_jobs() -> None:
    reader = InMemoryMetricReader()
    svc = Service("svc")

    @svc.queue_worker("ok")
    async def ok(ctx: Context, job: dict[str, Any]) -> None:
        pass

    @svc.queue_worker("bad", lifecycle=Lifecycle(max_attempts=1))
    async def bad(ctx: Context, job: dict[str, Any]) -> None:
        raise RuntimeError("no")

    app = App([svc], backend="memory://", metrics=MeterProvider(metric_readers=[reader]))
    async with running(app):
        await app.enqueue_many("ok", [{}] * 3)
        await app.enqueue("bad", {})
        await wait_until(lambda: app.dead_letters("bad").list())
        await wait_until(lambda: _points(reader).get(("conveyor.jobs.succeeded", "ok")))
        await wait_until(lambda: _points(reader)[("conveyor.jobs.succeeded", "ok")].value == 3)
        app.runtime.metrics.record_stats(await app.stats(), app.clock.now())
        points = _points(reader)
    assert points[("conveyor.jobs.enqueued", "ok")].value == 3
    assert points[("conveyor.jobs.started", "ok")].value == 3
    assert points[("conveyor.jobs.dead_lettered", "bad")].value == 1
    assert points[("conveyor.job.duration", "ok")].count == 3
    bounds = points[("conveyor.job.duration", "ok")].explicit_bounds
    assert bounds[0] == 0.001 and bounds[-1] == 600.0  # 1 ms to 10 minutes
    assert points[("conveyor.queue.dead_letters", "bad")].value == 1
    assert points[("conveyor.queue.depth", "ok")].value == 0


async def test_health_is_ok_then_warns_on_dead_letters_and_backlog() -> None:
    svc = Service("svc")

    @svc.queue_worker("fragile", lifecycle=Lifecycle(max_attempts=1))
    async def fragile(ctx: Context, job: dict[str, Any]) -> None:
        raise RuntimeError("broken")

    app = App([svc], backend="memory://")
    async with app:
        assert (await app.health()).status == "ok"
        await app.enqueue_many("fragile", [{}] * 3)
        report = await app.health(HealthThresholds(max_backlog=2))
        assert report.status == "warn" and report.exit_code == 1
        assert report.problems == ["fragile: backlog of 3 ready jobs (over 2)"]
    async with running(app):
        await wait_until(lambda: _count_dead(app, 3))
        report = await app.health()
    assert report.status == "warn" and report.problems == ["fragile: 3 dead letter(s)"]


async def _count_dead(app: App, count: int) -> bool:
    return len(await app.dead_letters("fragile").list()) == count


def test_health_command_fails_with_exit_code_2_when_the_backend_is_unreachable(tmp_path: Path) -> None:
    module = tmp_path / "unreachable_app.py"
    module.write_text(
        "from conveyor import App, Service\napp = App([Service('svc')], backend='redis://127.0.0.1:1/0')\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        result = CliRunner().invoke(main, ["health", "unreachable_app:app", "--json"])
    finally:
        sys.path.remove(str(tmp_path))
    assert result.exit_code == 2, result.output
    report = json.loads(result.output)
    assert report["status"] == "fail" and "backend unreachable" in report["problems"][0]


def test_json_logs_carry_the_job_context() -> None:
    record = logging.LogRecord("conveyor.handler.q", logging.INFO, __file__, 1, "charged %s", ("42",), None)
    record.__dict__.update(service="orders", queue="q", job_id="j1", attempt=2, correlation_id="order-42")
    data = json.loads(JSONFormatter().format(record))
    assert data == {
        "time": record.created,
        "level": "INFO",
        "logger": "conveyor.handler.q",
        "message": "charged 42",
        "service": "orders",
        "queue": "q",
        "job_id": "j1",
        "attempt": 2,
        "correlation_id": "order-42",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _worker_serving_metrics(tmp_path: Path, *options: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A ``conveyor worker --metrics-port P`` process (with ``options``) after two jobs were enqueued."""
    db = tmp_path / "metrics.db"
    (tmp_path / "metrics_app.py").write_text(
        "from typing import Any\n"
        "from conveyor import App, Context, Service\n"
        "svc = Service('svc')\n"
        "@svc.queue_worker('tick')\n"
        "async def tick(ctx: Context, job: dict[str, Any]) -> None:\n"
        "    pass\n"
        f"app = App([svc], backend='sqlite:///{db}')\n"
    )
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("CONVEYOR_METRICS_HOST", None)
    enqueue = [sys.executable, "-m", "conveyor.cli", "enqueue", "metrics_app:app", "tick", "{}"]
    for _ in range(2):
        subprocess.run(enqueue, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.cli",
            "worker",
            "metrics_app:app",
            "--metrics-port",
            str(port),
            *options,
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield port, worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=30) == 0
        finally:
            worker.kill()
            if worker.stderr is not None:
                worker.stderr.close()


def _scrape_until(worker: subprocess.Popen[bytes], url: str, wanted: re.Pattern[str]) -> str:
    """The endpoint's text once it matches ``wanted`` (60 s at most)."""
    text, deadline = "", time.monotonic() + 60
    while not wanted.search(text) and time.monotonic() < deadline:
        assert worker.poll() is None, (worker.stderr.read() if worker.stderr else b"").decode()
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                text = response.read().decode()
        except OSError:
            text = ""
        time.sleep(0.1)  # polling interval of the scrape loop, bounded by the deadline
    return text


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    found = set()
    with contextlib.suppress(OSError):
        found.update(
            str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        )
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: it only picks the local address
        found.add(str(probe.getsockname()[0]))
    return next((a for a in sorted(found) if not a.startswith("127.") and a != "0.0.0.0"), None)


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (Linux's /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.slow
def test_worker_serves_prometheus_metrics_on_loopback_only_by_default(tmp_path: Path) -> None:
    succeeded = re.compile(r'conveyor_jobs_succeeded_total\{messaging_destination_name="tick"[^}]*\} 2\.0')
    with _worker_serving_metrics(tmp_path) as (port, worker):
        text = _scrape_until(worker, f"http://127.0.0.1:{port}/metrics", succeeded)
        assert succeeded.search(text), text[-2000:]
        assert re.search(r'conveyor_job_duration_seconds_bucket\{[^}]*le="0\.001"', text), text[-2000:]
        assert re.search(r'target_info\{[^}]*service_name="svc"', text), text[:2000]
        outside = _non_loopback_address()
        if outside is not None:  # queue names and depths are not served to the network
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outside, port), timeout=5).close()
        else:
            assert _listening_addresses(port) == {"127.0.0.1"}


@pytest.mark.slow
def test_metrics_host_chooses_the_address_of_the_endpoint(tmp_path: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("127.0.0.2 is not a loopback address here (it is on Linux)")
    with _worker_serving_metrics(tmp_path, "--metrics-host", "127.0.0.2") as (port, worker):
        text = _scrape_until(worker, f"http://127.0.0.2:{port}/metrics", re.compile("conveyor_"))
        assert "conveyor_" in text
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_queue_gauges_show_scheduled_in_flight_and_paused() -> None:
    reader = InMemoryMetricReader()
    svc = Service("svc")

    @svc.queue_worker("later")
    async def later(ctx: Context, job: dict[str, Any]) -> None:
        pass

    app = App([svc], backend="memory://", metrics=MeterProvider(metric_readers=[reader]))
    async with app:
        await app.enqueue_many("later", [{}] * 2, delay=60)
        await app.queues.pause("later")
        app.runtime.metrics.record_stats(await app.stats(), app.clock.now())
        points = _points(reader)
        assert points[("conveyor.queue.scheduled", "later")].value == 2
        assert points[("conveyor.queue.in_flight", "later")].value == 0
        assert points[("conveyor.queue.paused", "later")].value == 1
        await app.queues.resume("later")
        app.runtime.metrics.record_stats(await app.stats(), app.clock.now())
        assert _points(reader)[("conveyor.queue.paused", "later")].value == 0


def test_the_app_is_named_after_its_first_service_unless_named() -> None:
    first, second = Service("billing"), Service("mail")
    assert App([first, second], backend="memory://").name == "billing"
    assert App([first], backend="memory://", name="shop").name == "shop"
    assert App([], backend="memory://").name == "conveyor"


def test_the_prometheus_provider_carries_the_apps_service_name() -> None:
    from conveyor.observability.metrics import prometheus_meter_provider

    provider = prometheus_meter_provider("shop")
    try:
        assert provider._sdk_config.resource.attributes["service.name"] == "shop"
    finally:
        provider.shutdown()
