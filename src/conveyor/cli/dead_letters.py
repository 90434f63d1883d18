"""``conveyor dlq``: find, show, redrive or purge dead letters, by ids or by filter."""

from __future__ import annotations

import base64
import sys
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from conveyor.cli.common import console, echo_json, load_app, parse_time, run, show, when, whole

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.operations.dead_letters import DeadLetters
    from conveyor.ports import DeadLetter


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("action", type=click.Choice(["list", "show", "redrive", "purge"]))
@click.argument("ids", nargs=-1)
@click.option("--queue", "-q", default=None, help="only this queue's dead letters")
@click.option(
    "--error", "error_type", default=None, help="only this error type (ValueError, shop.PaymentDeclined)"
)
@click.option(
    "--since", default=None, help="failed at or after: ISO 8601 (UTC by default) or ago (15m, 2h, 3d)"
)
@click.option("--until", default=None, help="failed before: as --since")
@click.option("--grep", "text", default=None, help="only those whose error message contains this (any case)")
@click.option("--all", "everything", is_flag=True, help="redrive/purge: every dead letter, no filter needed")
@click.option("--dry-run", is_flag=True, help="redrive/purge: count what would be acted on, change nothing")
@click.option("--delay", type=float, default=None, help="redrive: seconds before the jobs are due")
@click.option("--limit", default=100, show_default=True, help="list: how many (newest first)")
@click.option(
    "--before", default=None, metavar="ID", help="list: the page after (older than) this dead letter"
)
@click.option("--json", "as_json", is_flag=True)
def dlq(
    app_spec: str,
    action: str,
    ids: tuple[str, ...],
    queue: str | None,
    error_type: str | None,
    since: str | None,
    until: str | None,
    text: str | None,
    everything: bool,
    dry_run: bool,
    delay: float | None,
    limit: int,
    before: str | None,
    as_json: bool,
) -> None:
    """Dead letters, newest first: list (filtered), show IDS (body and traceback), redrive or purge.

    redrive and purge take IDS, or act on everything matching the filter (--queue, --error,
    --since, --until, --grep); with no IDS and no filter, --all is needed. --dry-run counts.
    Exit code 1 when IDS name dead letters that do not exist.

    \b
      conveyor dlq APP list --queue payments --error PaymentDeclined --since 2h
      conveyor dlq APP show 01J...
      conveyor dlq APP redrive --queue payments --grep timeout --dry-run
      conveyor dlq APP purge --all
    """
    app = load_app(app_spec, read_only=True)
    now = app.clock.now()
    letters = app.dead_letters(
        queue,
        error_type=error_type,
        since=None if since is None else parse_time(since, now),
        until=None if until is None else parse_time(until, now),
        text=text,
    )
    filtered = any(v is not None for v in (queue, error_type, since, until, text))
    if action in ("redrive", "purge") and not ids and not filtered and not everything:
        raise click.UsageError(f"{action} what? give IDS, a filter (--queue, --error, ...), or --all")
    if action == "show" and not ids:
        raise click.UsageError("show needs the IDS of the dead letters to show")
    if action == "list" and ids:
        raise click.UsageError("list takes no IDS (use show)")

    async def go() -> int:
        async with app:
            if action == "list":
                await _list(app, letters, limit, before, as_json)
                return 0
            if action == "show":
                return await _show(letters, ids, as_json)
            return await _act(letters, action, ids, dry_run, delay, as_json)

    sys.exit(run(go))


async def _list(app: App, letters: DeadLetters, limit: int, before: str | None, as_json: bool) -> None:
    after: DeadLetter | None = None
    if before is not None:
        after = await letters.get(before)
        if after is None:
            raise click.BadParameter(f"no dead letter {before!r}", param_hint="--before")
    entries = await letters.page(limit, after)
    if as_json:
        echo_json([dead_letter_json(e) for e in entries])
        return
    table = Table()
    whole(table, "id", [e.id for e in entries])
    whole(table, "queue", [e.queue for e in entries])
    table.add_column("attempts", justify="right")
    table.add_column("failed at (UTC)")
    table.add_column("error", overflow="fold")
    for e in entries:
        table.add_row(  # stored text is shown as it is, never read as rich markup
            escape(e.id),
            escape(e.queue),
            str(e.attempts),
            when(e.failed_at),
            escape(f"{e.error.type}: {e.error.message}"),
        )
    if entries:
        show(table)
    else:
        console.print("no dead letters")
    if len(entries) == limit:
        total = await letters.count()
        console.print(f"{limit} of {total}; more: --before {entries[-1].id}", markup=False)


async def _show(letters: DeadLetters, ids: tuple[str, ...], as_json: bool) -> int:
    found = [(dead_id, await letters.get(dead_id)) for dead_id in ids]
    if as_json:
        echo_json([dead_letter_json(d, traceback=True) for _, d in found if d is not None])
    for dead_id, dead in found:
        if dead is None:
            click.echo(f"no dead letter {dead_id}", err=True)
        elif not as_json:
            for label, value in (
                ("dead letter", dead.id),
                ("queue", dead.queue),
                ("attempts", str(dead.attempts)),
                ("enqueued", when(dead.enqueued_at)),
                ("failed", when(dead.failed_at)),
                ("error", f"{dead.error.type}: {dead.error.message}"),
            ):
                console.print(f"[bold]{label:>12}[/] {escape(value)}")
            shown = dead_letter_json(dead)
            body = shown.get("message", shown.get("body_text", shown.get("body_base64")))
            console.print(f"[bold]{'body':>12}[/]")
            console.print_json(data=body) if "message" in shown else console.print(escape(str(body)))
            if dead.error.traceback:
                console.print(escape(dead.error.traceback.rstrip()), style="dim")
    return 1 if any(dead is None for _, dead in found) else 0


async def _act(
    letters: DeadLetters, action: str, ids: tuple[str, ...], dry_run: bool, delay: float | None, as_json: bool
) -> int:
    verb = "redriven" if action == "redrive" else "purged"
    if ids:
        present = [dead_id for dead_id in ids if await letters.get(dead_id) is not None]
        missing = [dead_id for dead_id in ids if dead_id not in present]
        for dead_id in missing:
            click.echo(f"no dead letter {dead_id}", err=True)
        if dry_run:
            count = len(present)
        elif action == "redrive":
            count = await letters.redrive(present, delay=delay) if present else 0
        else:
            count = await letters.purge(present) if present else 0
        if present or as_json:  # with none found, "no dead letter ..." for each says it all
            _report(verb, count, dry_run, as_json, missing)
        return 1 if missing else 0
    total = await letters.count()
    if dry_run or total == 0:
        _report(verb, total, dry_run, as_json, [])
        return 0
    with Progress(console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task(f"{action} {total} dead letters", total=total)

        def advanced(done: int) -> None:
            progress.update(task, completed=done)

        if action == "redrive":
            count = await letters.redrive(delay=delay, progress=advanced)
        else:
            count = await letters.purge(progress=advanced)
    _report(verb, count, False, as_json, [])
    return 0


def _report(verb: str, count: int, dry_run: bool, as_json: bool, missing: list[str]) -> None:
    if as_json:
        echo_json({"dry_run": dry_run, "matched" if dry_run else verb: count, "missing": missing})
    elif dry_run:
        console.print(f"would be {verb}: {count} (dry run: nothing changed)")
    else:
        console.print(f"{verb}: {count}")


def dead_letter_json(entry: DeadLetter, *, traceback: bool = False) -> dict[str, Any]:
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
    if traceback:
        shown["traceback"] = entry.error.traceback
    try:
        shown["message"] = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        try:
            shown["body_text"] = entry.body.decode()
        except UnicodeDecodeError:
            shown["body_base64"] = base64.b64encode(entry.body).decode()
    return shown
