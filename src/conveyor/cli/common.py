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
    "waiting": "blue",
    "timed_out": "magenta",
    "unknown": "dim",
}


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
