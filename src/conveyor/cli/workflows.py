"""``conveyor status``, ``workflows``, ``approve`` and ``graph``: workflow instances and the graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import click
import orjson
from rich.markup import escape
from rich.table import Table

from conveyor.cli.common import STATE_STYLE, console, load_app, run, show, when, whole
from conveyor.operations.status import STATES

if TYPE_CHECKING:
    from conveyor.operations.status import State


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("instance_id")
@click.option("--json", "as_json", is_flag=True)
def status(app_spec: str, instance_id: str, as_json: bool) -> None:
    """Where is workflow instance ID, and why: state, path, steps and timeline.

    Exit code 1 when no history is recorded for ID.
    """
    app = load_app(app_spec, read_only=True)

    async def go() -> None:
        async with app:
            result = await app.workflows.status(instance_id)
            state = await app.states.get(f"workflow:{instance_id}")
        if result.state == "unknown":
            raise click.ClickException(
                f"no workflow instance {instance_id!r}: no history is recorded for this id "
                "(a typo, another backend, App(history=False), or its history was pruned)"
            )
        if as_json:
            click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
            return
        style = STATE_STYLE.get(result.state, "")
        console.print(
            f"[bold]{escape(instance_id)}[/]  [{style}]{result.state}[/]"
            + (f"  ({result.workflow})" if result.workflow else ""),
            soft_wrap=True,  # the id whole on its line, to copy
        )
        console.print("path: " + " → ".join(result.path), markup=False)
        if result.current:
            console.print("waiting on: " + ", ".join(result.current), markup=False)
        if result.compensations:
            console.print("compensations: " + ", ".join(result.compensations), markup=False)
        if result.last_error:
            console.print(f"[red]last error:[/] {escape(result.last_error)}")
        if state is not None:
            console.print(f"state: {orjson.dumps(state).decode()}", markup=False)
        table = Table("time (UTC)", "what")
        whole(table, "name", [entry.name for entry in result.history])
        table.add_column("attempt")
        table.add_column("detail", overflow="fold")
        for entry in result.history:
            table.add_row(
                when(entry.at),
                entry.kind,
                escape(entry.name),
                str(entry.attempt or ""),
                escape(entry.detail or ""),
            )
        show(table)

    run(go)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--state", type=click.Choice(STATES), default=None, help="only instances in this state")
@click.option("--workflow", default=None, help="only instances of this declared workflow")
@click.option("--since", type=float, default=None, help="only instances started in the last N seconds")
@click.option("--limit", default=50, show_default=True)
@click.option("--schedules", is_flag=True, help="include schedule ticks' instances (schedule:<name>:<tick>)")
@click.option("--json", "as_json", is_flag=True)
def workflows(
    app_spec: str,
    state: str | None,
    workflow: str | None,
    since: float | None,
    limit: int,
    schedules: bool,
    as_json: bool,
) -> None:
    """List workflow instances, newest first: state, current step, last error.

    Schedule ticks' instances are left out unless --schedules is given."""
    app = load_app(app_spec, read_only=True)

    async def go() -> list[Any]:
        async with app:
            after = None if since is None else app.clock.now() - since
            wanted = cast("State | None", state)
            return await app.workflows.list(
                workflow=workflow, state=wanted, since=after, limit=limit, schedules=schedules
            )

    found = run(go)
    if as_json:
        click.echo(
            orjson.dumps(
                [{k: v for k, v in s.to_dict().items() if k != "history"} for s in found],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    table = Table()
    whole(table, "instance", [s.id for s in found])
    whole(table, "workflow", [s.workflow or "-" for s in found])
    table.add_column("state")
    table.add_column("started (UTC)")
    table.add_column("current / last error", overflow="fold")
    for s in found:
        style = STATE_STYLE.get(s.state, "")
        detail = ", ".join(s.current) or (s.last_error or "")
        table.add_row(
            escape(s.id), s.workflow or "-", f"[{style}]{s.state}[/]", when(s.started_at), escape(detail)
        )
    if found:
        show(table)
    else:
        console.print("no workflow instances")


@click.command()
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


@click.command()
@click.argument("app_spec", metavar="APP")
def graph(app_spec: str) -> None:
    """Print APP's workflow graph as Mermaid, from the declared emits and subscriptions."""
    from conveyor.operations.graph import build_graph

    app = load_app(app_spec)
    drawn = build_graph(app.registry, app.workflows.declared)
    click.echo(drawn.mermaid)
    for warning in drawn.warnings:
        click.echo(f"warning: {warning}", err=True)
