"""The ``conveyor`` command. APP is ``module:attribute`` naming an :class:`~conveyor.App`.

A conveyor error ends a command with one line on stderr, exit code 2 for a misuse (configuration,
an unknown queue or command, an invalid payload) and 1 for a failure (the backend is unreachable);
``--traceback`` (or ``--log-level DEBUG``) prints the traceback too.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor.app import App
from conveyor.model.errors import (
    ConfigurationError,
    ConveyorError,
    PayloadTooLargeError,
    PayloadValidationError,
    UndeclaredEmitError,
    UnknownNameError,
)
from conveyor.observability.logging import configure_logging

if TYPE_CHECKING:
    from conveyor.operations.status import State
    from conveyor.ports import DeadLetter

console = Console()
T = TypeVar("T")

STATE_STYLE = {
    "completed": "green",
    "failed": "red",
    "compensated": "yellow",
    "running": "cyan",
    "waiting": "blue",
    "timed_out": "magenta",
    "unknown": "dim",
}


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (the current directory is importable, like uvicorn does)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{spec!r} is not module:attribute (e.g. myapp.main:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise click.BadParameter(f"{spec!r} is {type(app).__name__}, not a conveyor App")
    return app


MISUSE = (
    ConfigurationError,
    UnknownNameError,  # an unknown queue, command or approval gate
    PayloadValidationError,
    PayloadTooLargeError,
    UndeclaredEmitError,
)
"""Errors that say the command or the app is wrong, not the system: exit code 2, like bad usage."""


class ConveyorFailed(click.ClickException):
    """A conveyor error as the command's one line (``Error: BackendUnavailableError: ...``), exit 1."""

    def __init__(self, exc: ConveyorError) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")


class ConveyorMisused(ConveyorFailed):
    """A conveyor error that says the command or the app is wrong: exit 2, as for bad usage."""

    exit_code = 2


def print_traceback_if_asked(exc: BaseException) -> None:
    """Print ``exc``'s traceback to stderr under ``--traceback`` or ``--log-level DEBUG``."""
    context = click.get_current_context(silent=True)
    root = context.find_root().params if context is not None else {}
    if root.get("show_traceback") or str(root.get("log_level", "")).upper() == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)


def failed(exc: ConveyorError) -> ConveyorFailed:
    """The command's end for ``exc``, after its traceback if asked for."""
    print_traceback_if_asked(exc)
    return ConveyorMisused(exc) if isinstance(exc, MISUSE) else ConveyorFailed(exc)


class ConveyorGroup(click.Group):
    """The ``conveyor`` group: a conveyor error in any command ends it with :func:`failed`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            raise failed(exc) from exc


def run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@click.group(cls=ConveyorGroup)
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    help="conveyor's log level (DEBUG also prints the traceback of an error)",
)
@click.option("--json-logs", is_flag=True, help="one JSON object per log record")
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="print the traceback of an error, not just its line"
)
def main(log_level: str, json_logs: bool, show_traceback: bool) -> None:
    """conveyor: event-driven services and long-running workflows."""
    configure_logging(log_level, json=json_logs)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--concurrency", "-c", type=int, default=None, help="jobs run at once")
@click.option("--queues", "-q", default=None, help="comma-separated queues to work (default: all)")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    envvar="CONVEYOR_METRICS_PORT",
    show_envvar=True,
    help="serve Prometheus metrics on this port",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="CONVEYOR_METRICS_HOST",
    show_envvar=True,
    help="address of the metrics endpoint (0.0.0.0: every interface, so anyone who reaches the "
    "host reads queue names and depths)",
)
def worker(
    app_spec: str, concurrency: int | None, queues: str | None, metrics_port: int | None, metrics_host: str
) -> None:
    """Work APP's queues and fire its schedules until SIGTERM (graceful) or a second SIGINT."""
    import logging

    if logging.getLogger("conveyor").level > logging.INFO:
        logging.getLogger("conveyor").setLevel(logging.INFO)
    if metrics_port is not None:
        serve_prometheus(metrics_host, metrics_port)
    app = load_app(app_spec)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        app.run(queues=names, concurrency=concurrency)
    except ConveyorError as exc:
        raise failed(exc) from exc


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("queue")
@click.argument("payload", default="{}")
@click.option("--delay", type=float, default=None, help="seconds before the job is available")
@click.option("--key", "idempotency_key", default=None, help="idempotency key")
@click.option("--correlation-id", default=None, help="workflow instance id")
@click.option(
    "--external",
    is_flag=True,
    help="QUEUE is served by another app: enqueue although APP does not declare it",
)
def enqueue(
    app_spec: str,
    queue: str,
    payload: str,
    delay: float | None,
    idempotency_key: str | None,
    correlation_id: str | None,
    external: bool,
) -> None:
    """Enqueue one job: conveyor enqueue APP QUEUE '{"order_id": "42"}'.

    QUEUE must be declared by a service of APP or named in its external_queues; --external
    enqueues into a queue another app serves.
    """
    app = load_app(app_spec)
    data = _json(payload)

    async def go() -> str:
        async with app:
            return await app.enqueue(
                queue,
                data,
                delay=delay,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                external=external,
            )

    click.echo(run(go))


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("event")
@click.argument("payload", default="{}")
@click.option("--correlation-id", default=None, help="workflow instance id")
def emit(app_spec: str, event: str, payload: str, correlation_id: str | None) -> None:
    """Emit one event to its subscriptions."""
    app = load_app(app_spec)
    data = _json(payload)

    async def go() -> str:
        async with app:
            return await app.emit(event, data, correlation_id=correlation_id)

    click.echo(run(go))


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"payload is not JSON: {exc}") from exc


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("action", type=click.Choice(["list", "redrive", "purge"]))
@click.argument("ids", nargs=-1)
@click.option("--queue", "-q", default=None, help="only this queue's dead letters")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq(
    app_spec: str, action: str, ids: tuple[str, ...], queue: str | None, limit: int, as_json: bool
) -> None:
    """List, redrive or purge dead letters (all of a queue's when no IDS are given)."""
    app = load_app(app_spec)

    async def go() -> None:
        async with app:
            letters = app.dead_letters(queue)
            if action == "redrive":
                count = await letters.redrive(list(ids) if ids else None)
                console.print(f"redriven: {count}")
            elif action == "purge":
                count = await letters.purge(list(ids) if ids else None)
                console.print(f"purged: {count}")
            else:
                entries = await letters.list(limit=limit)
                if as_json:
                    listed = [dead_letter_json(e) for e in entries]
                    click.echo(orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode())
                    return
                table = Table("id", "queue", "attempts", "failed at (UTC)", "error")
                for e in entries:
                    table.add_row(  # stored text is shown as it is, never read as rich markup
                        escape(e.id),
                        escape(e.queue),
                        str(e.attempts),
                        when(e.failed_at),
                        escape(f"{e.error.type}: {e.error.message}"),
                    )
                console.print(table if entries else "no dead letters")

    run(go)


def dead_letter_json(entry: DeadLetter) -> dict[str, Any]:
    """A dead letter for ``dlq list --json``. Its stored body is shown losslessly under one key:
    ``message`` (the envelope, when the body is JSON), ``body_text`` (the text, when it is UTF-8
    but not JSON) or ``body_base64`` (any other bytes)."""
    shown: dict[str, Any] = {
        "id": entry.id,
        "queue": entry.queue,
        "attempts": entry.attempts,
        "error_type": entry.error.type,
        "error": entry.error.message,
        "failed_at": entry.failed_at,
        "enqueued_at": entry.enqueued_at,
    }
    try:
        shown["message"] = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        try:
            shown["body_text"] = entry.body.decode()
        except UnicodeDecodeError:
            shown["body_base64"] = base64.b64encode(entry.body).decode()
    return shown


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("instance_id")
@click.option("--json", "as_json", is_flag=True)
def status(app_spec: str, instance_id: str, as_json: bool) -> None:
    """Where is workflow instance ID, and why: state, path, steps and timeline."""
    app = load_app(app_spec)

    async def go() -> None:
        async with app:
            result = await app.workflows.status(instance_id)
            state = await app.states.get(f"workflow:{instance_id}")
        if as_json:
            click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
            return
        style = STATE_STYLE.get(result.state, "")
        console.print(
            f"[bold]{escape(instance_id)}[/]  [{style}]{result.state}[/]"
            + (f"  ({result.workflow})" if result.workflow else "")
        )
        if result.state == "unknown":
            console.print("no history recorded for this id")
            return
        console.print("path: " + " → ".join(result.path), markup=False)
        if result.current:
            console.print("waiting on: " + ", ".join(result.current), markup=False)
        if result.compensations:
            console.print("compensations: " + ", ".join(result.compensations), markup=False)
        if result.last_error:
            console.print(f"[red]last error:[/] {escape(result.last_error)}")
        if state is not None:
            console.print(f"state: {orjson.dumps(state).decode()}", markup=False)
        table = Table("time (UTC)", "what", "name", "attempt", "detail")
        for entry in result.history:
            table.add_row(
                when(entry.at),
                entry.kind,
                escape(entry.name),
                str(entry.attempt or ""),
                escape(entry.detail or ""),
            )
        console.print(table)

    run(go)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--state", type=click.Choice(list(STATE_STYLE)), default=None, help="only instances in this state"
)
@click.option("--workflow", default=None, help="only instances of this declared workflow")
@click.option("--since", type=float, default=None, help="only instances started in the last N seconds")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def workflows(
    app_spec: str, state: str | None, workflow: str | None, since: float | None, limit: int, as_json: bool
) -> None:
    """List workflow instances, newest first: state, current step, last error."""
    app = load_app(app_spec)

    async def go() -> list[Any]:
        async with app:
            after = None if since is None else app.clock.now() - since
            wanted = cast("State | None", state)
            return await app.workflows.list(workflow=workflow, state=wanted, since=after, limit=limit)

    found = run(go)
    if as_json:
        click.echo(
            orjson.dumps(
                [{k: v for k, v in s.to_dict().items() if k != "history"} for s in found],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    table = Table("instance", "workflow", "state", "started (UTC)", "current / last error")
    for s in found:
        style = STATE_STYLE.get(s.state, "")
        detail = ", ".join(s.current) or (s.last_error or "")
        table.add_row(
            escape(s.id), s.workflow or "-", f"[{style}]{s.state}[/]", when(s.started_at), escape(detail)
        )
    console.print(table if found else "no workflow instances")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("instance_id")
@click.option("--gate", default=None, help="the approval gate (default: the one the instance waits at)")
@click.option("--approve/--reject", "approve", default=True, help="the decision (default: approve)")
@click.option("--note", default=None, help="a note kept with the decision")
@click.option("--by", "by", default=None, help="who decides")
def approve(
    app_spec: str, instance_id: str, gate: str | None, approve: bool, note: str | None, by: str | None
) -> None:
    """Approve (or --reject) workflow instance ID waiting at an approval gate."""
    from conveyor.model.errors import ApprovalError

    app = load_app(app_spec)

    async def go() -> str:
        async with app:
            chosen = gate
            if chosen is None:
                pending = (await app.workflows.status(instance_id)).pending_approvals
                if len(pending) != 1:
                    waiting = ", ".join(pending) or "no gate"
                    raise ApprovalError(f"{instance_id!r} waits at {waiting}; name one with --gate")
                chosen = pending[0]
            await app.workflows.decide(instance_id, chosen, approve=approve, note=note, by=by)
            return chosen

    chosen = run(go)
    console.print(f"{instance_id}: {'approved' if approve else 'rejected'} at {chosen}")


@main.command()
@click.argument("app_spec", metavar="APP")
def graph(app_spec: str) -> None:
    """Print APP's workflow graph as Mermaid, from the declared emits and subscriptions."""
    from conveyor.operations.graph import build_graph

    app = load_app(app_spec)
    drawn = build_graph(app.registry, app.workflows.declared)
    click.echo(drawn.mermaid)
    for warning in drawn.warnings:
        click.echo(f"warning: {warning}", err=True)


def serve_prometheus(host: str, port: int) -> None:
    """Install an OpenTelemetry SDK meter provider exporting to a Prometheus endpoint."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise click.ClickException(
            "--metrics-port needs the OpenTelemetry SDK and its Prometheus exporter: "
            f"pip install 'conveyor[otel]' ({exc})"
        ) from exc
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    click.echo(f"metrics: http://{host}:{port}/metrics", err=True)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--max-backlog", type=int, default=10_000, show_default=True, help="ready jobs per queue before warn"
)
@click.option("--max-age", type=float, default=300.0, show_default=True, help="seconds a ready job may wait")
@click.option("--ignore-dead-letters", is_flag=True, help="do not warn about dead letters")
@click.option("--json", "as_json", is_flag=True)
def health(app_spec: str, max_backlog: int, max_age: float, ignore_dead_letters: bool, as_json: bool) -> None:
    """ok / warn / fail; exit code 0 / 1 / 2.

    warn: dead letters, backlog, old jobs, jobs in queues APP does not declare; fail: the backend
    is unreachable or misconfigured.
    """
    from conveyor.operations.health import HealthReport, HealthThresholds

    thresholds = HealthThresholds(max_backlog, max_age, not ignore_dead_letters)

    def failure(exc: ConveyorError | OSError) -> HealthReport:
        print_traceback_if_asked(exc)
        what = "configuration error" if isinstance(exc, MISUSE) else "backend unreachable"
        return HealthReport("fail", [f"{what}: {type(exc).__name__}: {exc}"])

    async def go(app: App) -> HealthReport:
        try:
            await app.connect()
        except (ConveyorError, OSError) as exc:
            return failure(exc)
        try:
            return await app.health(thresholds)
        finally:
            await app.close()

    try:
        app = load_app(app_spec)
    except ConveyorError as exc:  # raised while APP was imported: an unknown URL scheme, a missing extra
        report = failure(exc)
    else:
        report = asyncio.run(go(app))
    if as_json:
        shown = {"status": report.status, "problems": report.problems, "queues": report.queues}
        click.echo(
            orjson.dumps(
                {**shown, "undeclared_queues": report.undeclared_queues}, option=orjson.OPT_INDENT_2
            ).decode()
        )
    else:
        style = {"ok": "green", "warn": "yellow", "fail": "red"}[report.status]
        console.print(f"[{style}]{report.status}[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", markup=False)
    sys.exit(report.exit_code)


@main.command()
@click.argument("app_spec", metavar="APP")
def stats(app_spec: str) -> None:
    """Jobs per queue: ready, scheduled, running, dead.

    Every queue APP declares or names external, and any other queue holding jobs, marked
    "(undeclared)": nothing of APP runs those.
    """
    app = load_app(app_spec)

    async def go() -> None:
        async with app:
            rows = await app.stats()
        known = app.registry.known_queues
        table = Table("queue", "ready", "scheduled", "leased", "dead", "oldest ready (UTC)")
        for s in rows:
            table.add_row(
                escape(s.queue) if s.queue in known else f"{escape(s.queue)} [yellow](undeclared)[/]",
                str(s.ready),
                str(s.scheduled),
                str(s.leased),
                str(s.dead),
                when(s.oldest_ready_at),
            )
        console.print(table)

    run(go)


@main.command()
@click.option("--orders", "count", default=30, show_default=True, help="orders to place")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the SQLite file goes (default: a temporary directory)",
)
@click.option("--backend", default=None, help="backend URL instead of a SQLite file")
def demo(count: int, directory: Path | None, backend: str | None) -> None:
    """Run the seed's order fulfillment on embedded SQLite and print each workflow's path."""
    import logging

    from conveyor.demo import run_demo

    # declined cards are dead-lettered on purpose here; their log lines would tear the progress bar
    logging.getLogger("conveyor").setLevel(logging.CRITICAL)

    if backend is None:
        base = directory or Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
        base.mkdir(parents=True, exist_ok=True)
        backend = f"sqlite:///{(base / 'demo.db').resolve()}"
    ok = run(lambda: run_demo(backend, count, console))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
