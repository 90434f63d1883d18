"""``conveyor dlq``: list, redrive or purge dead letters."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.markup import escape
from rich.table import Table

from conveyor.cli.common import console, load_app, run, when

if TYPE_CHECKING:
    from conveyor.ports import DeadLetter


@click.command()
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
