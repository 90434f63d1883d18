"""The ``conveyor`` command. APP is ``module:attribute`` naming an :class:`~conveyor.App`.

A conveyor error ends a command with one line on stderr, exit code 2 for a misuse (configuration,
an unknown queue or command, an invalid payload) and 1 for a failure (the backend is unreachable);
``--traceback`` (or ``--log-level DEBUG``) prints the traceback too.
"""

from __future__ import annotations

import click

from conveyor.cli import dead_letters, demo, jobs, monitoring, operations, serve, worker, workflows
from conveyor.cli.common import Options
from conveyor.cli.errors import ConveyorGroup
from conveyor.observability.logging import configure_logging
from conveyor.settings import LOG_LEVELS, load_settings

__all__ = ["main"]

VERBOSE_COMMANDS = frozenset({"worker", "serve"})
"""Commands that run until stopped: they log at INFO unless told otherwise (a worker says when it
starts, stops and dead-letters)."""


@click.group(cls=ConveyorGroup)
@click.version_option(package_name="conveyor", message="conveyor %(version)s")
@click.option(
    "--backend",
    metavar="URL",
    default=None,
    help="the backend URL, in place of the one APP names and of CONVEYOR_URL",
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="conveyor's log level (DEBUG also prints the traceback of an error)  "
    "[default: CONVEYOR_LOG_LEVEL, else INFO for worker and serve, WARNING for the rest]",
)
@click.option("--json-logs", is_flag=True, default=None, help="one JSON object per log record")
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="print the traceback of an error, not just its line"
)
@click.pass_context
def main(
    ctx: click.Context,
    backend: str | None,
    log_level: str | None,
    json_logs: bool | None,
    show_traceback: bool,
) -> None:
    """conveyor: event-driven services and long-running workflows.

    Settings come from flags, then from the app's code, then from the environment (CONVEYOR_URL,
    CONVEYOR_CONCURRENCY, CONVEYOR_LOG_LEVEL, ...: docs/reference.md lists them), then defaults.
    """
    ctx.obj = Options(backend, (log_level or "WARNING").upper(), show_traceback)  # for an error just below
    settings = load_settings(log_level=log_level, json_logs=json_logs or None)
    level = settings.log_level or ("INFO" if ctx.invoked_subcommand in VERBOSE_COMMANDS else "WARNING")
    ctx.obj = Options(backend=backend, log_level=level, show_traceback=show_traceback)
    configure_logging(level, json=settings.json_logs)


main.add_command(worker.worker)
main.add_command(jobs.enqueue)
main.add_command(jobs.emit)
main.add_command(dead_letters.dlq)
main.add_command(workflows.status)
main.add_command(workflows.workflows)
main.add_command(workflows.approve)
main.add_command(workflows.graph)
main.add_command(monitoring.health)
main.add_command(monitoring.stats)
main.add_command(operations.queues)
main.add_command(operations.pause)
main.add_command(operations.resume)
main.add_command(operations.leases)
main.add_command(operations.job)
main.add_command(operations.cancel)
main.add_command(operations.workers)
main.add_command(serve.serve)
main.add_command(demo.demo)
