"""How a conveyor error ends a command: one line on stderr, exit code 2 for a misuse and 1 for a
failure, the traceback only when asked for."""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from conveyor.cli.common import options
from conveyor.model.errors import (
    ConfigurationError,
    ConveyorError,
    PayloadTooLargeError,
    PayloadValidationError,
    UndeclaredEmitError,
    UnknownNameError,
)

MISUSE = (
    ConfigurationError,
    UnknownNameError,  # an unknown queue, command or approval gate
    PayloadValidationError,
    PayloadTooLargeError,
    UndeclaredEmitError,
)
"""Errors that say the command or the app is wrong, not the system: exit code 2, like bad usage."""


class ConveyorFailed(click.ClickException):
    """A conveyor error as the command's one line (``Error: BackendUnavailableError: ...``), exit 1."""

    def __init__(self, exc: ConveyorError) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")


class ConveyorMisused(ConveyorFailed):
    """A conveyor error that says the command or the app is wrong: exit 2, as for bad usage."""

    exit_code = 2


def print_traceback_if_asked(exc: BaseException) -> None:
    """Print ``exc``'s traceback to stderr under ``--traceback`` or ``--log-level DEBUG``."""
    given = options()
    if given.show_traceback or given.log_level == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)


def failed(exc: ConveyorError) -> ConveyorFailed:
    """The command's end for ``exc``, after its traceback if asked for."""
    print_traceback_if_asked(exc)
    return ConveyorMisused(exc) if isinstance(exc, MISUSE) else ConveyorFailed(exc)


class ConveyorGroup(click.Group):
    """The ``conveyor`` group: a conveyor error in any command ends it with :func:`failed`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            raise failed(exc) from exc
