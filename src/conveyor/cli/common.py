"""What the commands share: loading APP, running a coroutine, the console and how times show."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console

from conveyor.app import App

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
    as the longest, never wrapped nor cropped."""
    width = max([len(header), *map(len, values)])
    table.add_column(header, no_wrap=True, min_width=width, overflow="ignore", **options)
