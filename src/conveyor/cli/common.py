"""What the commands share: loading APP, running a coroutine, the console and how times show."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from conveyor.app import App
from conveyor.model.errors import ConfigurationError
from conveyor.settings import DEFAULT_SQLITE_FILE, DEFAULT_URL

console = Console()
T = TypeVar("T")

STATE_STYLE = {
    "completed": "green",
    "failed": "red",
    "compensated": "yellow",
    "running": "cyan",
    "retrying": "dark_orange",
    "scheduled": "blue",
    "awaiting_approval": "bright_magenta",
    "waiting": "blue",
    "timed_out": "magenta",
    "unknown": "dim",
}
"""How each workflow state (:data:`conveyor.operations.status.STATES`) shows."""


@dataclass(frozen=True)
class Options:
    """The ``conveyor`` group's own flags, kept for its commands (``click.Context.obj``)."""

    backend: str | None = None
    log_level: str = "WARNING"
    show_traceback: bool = False


def options() -> Options:
    """The group's flags of the command running now (the defaults outside a command)."""
    context = click.get_current_context(silent=True)
    found = context.find_root().obj if context is not None else None
    return found if isinstance(found, Options) else Options()


def load_app(spec: str, *, read_only: bool = False) -> App:
    """Import ``module:attribute`` (the current directory is importable, like uvicorn does), on
    the backend of ``conveyor --backend`` when given.

    ``read_only`` commands look at an existing database: with no backend configured anywhere
    (not by APP, ``CONVEYOR_URL`` nor ``--backend``) and no default SQLite file here, they refuse
    rather than create an empty one and report on it.
    """
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
    backend = options().backend
    if backend is not None:
        app.use_backend(backend)
    elif read_only and app.backend_origin == "default" and not Path(DEFAULT_SQLITE_FILE).exists():
        raise ConfigurationError(
            f"no backend configured: {spec} names none and CONVEYOR_URL is unset, and there is no "
            f"{DEFAULT_SQLITE_FILE} (the default, {DEFAULT_URL}) in {os.getcwd()} to read; point at "
            "the app's database with --backend URL or CONVEYOR_URL"
        )
    return app


def run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_json(text: str) -> Any:
    """A command's PAYLOAD argument, parsed."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"payload is not JSON: {exc}") from exc


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_time(text: str, now: float) -> float:
    """A ``--since``/``--until`` value: an ISO 8601 time (UTC unless it says otherwise) or how long
    ago (``90s``, ``15m``, ``2h``, ``3d``, ``1w``)."""
    value = text.strip()
    unit = _UNITS.get(value[-1:].lower())
    if unit is not None:
        try:
            return now - float(value[:-1]) * unit
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-12-07T10:00) nor a time ago (90s, 15m, 2h, 3d)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def ago(seconds: float | None) -> str:
    """A duration as a few characters: ``-``, ``850ms``, ``42s``, ``7m 05s``, ``3h 20m``, ``2d 4h``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def echo_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (what every ``--json`` prints)."""
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def whole(table: Any, header: str, values: list[str], **options: Any) -> None:
    """Add a column to a rich ``table`` that never cuts its values (ids a user must copy): as wide
    as the longest, never wrapped nor cropped. Print the table with :func:`show`."""
    width = max([len(header), *map(len, values)])
    table.add_column(header, no_wrap=True, min_width=width, overflow="ignore", **options)


def show(table: Table) -> None:
    """Print ``table`` as wide as its :func:`whole` columns need, wider than the terminal if it
    must: rich would squeeze such a table to the terminal's width and crop the ids."""
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    (console if needed <= console.width else Console(width=needed)).print(table)
