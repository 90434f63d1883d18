"""``conveyor demo``: the seed's order fulfillment, on embedded SQLite unless told otherwise."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from conveyor.cli.common import console, options, run


@click.command()
@click.option("--orders", "count", default=30, show_default=True, help="orders to place")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the SQLite file goes (default: a temporary directory)",
)
@click.option(
    "--backend", default=None, help="backend URL instead of a SQLite file (or conveyor --backend URL demo)"
)
def demo(count: int, directory: Path | None, backend: str | None) -> None:
    """Run the seed's order fulfillment on embedded SQLite and print each workflow's path."""
    import logging

    from conveyor.demo import run_demo

    # declined cards are dead-lettered on purpose here; their log lines would tear the progress bar
    logging.getLogger("conveyor").setLevel(logging.CRITICAL)

    backend = backend or options().backend
    if backend is None:
        base = directory or Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
        base.mkdir(parents=True, exist_ok=True)
        backend = f"sqlite:///{(base / 'demo.db').resolve()}"
    ok = run(lambda: run_demo(backend, count, console))
    sys.exit(0 if ok else 1)
