"""``conveyor demo``: the seed's order fulfillment, on embedded SQLite unless told otherwise."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from conveyor.cli.common import console, options, run
from conveyor.cli.serve import server_runner


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
@click.option(
    "--serve",
    "then_serve",
    is_flag=True,
    help="then leave the dashboard and the workers running on the demo's database (needs conveyor[serve])",
)
@click.option("--port", type=int, default=8080, show_default=True, help="the dashboard's port with --serve")
def demo(count: int, directory: Path | None, backend: str | None, then_serve: bool, port: int) -> None:
    """Run the seed's order fulfillment on embedded SQLite and print each workflow's path.

    With --serve, the dashboard and the HTTP API stay up on 127.0.0.1 afterwards, on the same
    database, with the workers running (Ctrl-C stops them).
    """
    import logging

    from conveyor.demo import run_demo

    # declined cards are dead-lettered on purpose here; their log lines would tear the progress bar
    logging.getLogger("conveyor").setLevel(logging.CRITICAL)

    backend = backend or options().backend
    if backend is None:
        base = directory or Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
        base.mkdir(parents=True, exist_ok=True)
        backend = f"sqlite:///{(base / 'demo.db').resolve()}"
    serve_http = server_runner() if then_serve else None  # a missing extra fails before the demo
    ok = run(lambda: run_demo(backend, count, console))
    if serve_http is None or not ok:
        sys.exit(0 if ok else 1)
    from conveyor.examples.order_fulfillment import make_app

    def started(url: str) -> None:
        console.print(f"the dashboard: [bold cyan]{url}/ui[/]   the API: {url}/docs   (Ctrl-C to stop)")

    logging.getLogger("conveyor").setLevel(logging.WARNING)
    run(lambda: serve_http(make_app(backend), port=port, workers=True, started=started))
