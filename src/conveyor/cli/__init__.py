"""The ``conveyor`` command. APP is ``module:attribute`` naming an :class:`~conveyor.App`.

A conveyor error ends a command with one line on stderr, exit code 2 for a misuse (configuration,
an unknown queue or command, an invalid payload) and 1 for a failure (the backend is unreachable);
``--traceback`` (or ``--log-level DEBUG``) prints the traceback too.
"""

from __future__ import annotations

import click

from conveyor.cli import dead_letters, demo, jobs, monitoring, operations, serve, worker, workflows
from conveyor.cli.errors import ConveyorGroup
from conveyor.observability.logging import configure_logging

__all__ = ["main"]


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
