"""``conveyor health`` and ``conveyor stats``: is the backend reachable, how full are the queues."""

from __future__ import annotations

import asyncio
import sys

import click
import orjson
from rich.markup import escape
from rich.table import Table

from conveyor.app import App
from conveyor.cli.common import console, echo_json, load_app, run, show, when, whole
from conveyor.cli.errors import MISUSE, print_traceback_if_asked
from conveyor.model.errors import ConveyorError


@click.command()
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
        app = load_app(app_spec, read_only=True)
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


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--json", "as_json", is_flag=True)
def stats(app_spec: str, as_json: bool) -> None:
    """Jobs per queue: ready, scheduled, running, dead.

    Every queue APP declares or names external, and any other queue holding jobs, marked
    "(undeclared)": nothing of APP runs those.
    """
    app = load_app(app_spec, read_only=True)

    async def go() -> None:
        async with app:
            rows = await app.stats()
        known = app.registry.known_queues
        if as_json:
            echo_json(
                [
                    {
                        "queue": s.queue,
                        "declared": s.queue in known,
                        "ready": s.ready,
                        "scheduled": s.scheduled,
                        "leased": s.leased,
                        "dead": s.dead,
                        "oldest_ready_at": s.oldest_ready_at,
                    }
                    for s in rows
                ]
            )
            return
        table = Table()
        whole(table, "queue", [s.queue if s.queue in known else f"{s.queue} (undeclared)" for s in rows])
        for header in ("ready", "scheduled", "leased", "dead"):
            table.add_column(header, justify="right")
        table.add_column("oldest ready (UTC)")
        for s in rows:
            table.add_row(
                escape(s.queue) if s.queue in known else f"{escape(s.queue)} [yellow](undeclared)[/]",
                str(s.ready),
                str(s.scheduled),
                str(s.leased),
                str(s.dead),
                when(s.oldest_ready_at),
            )
        show(table)

    run(go)
