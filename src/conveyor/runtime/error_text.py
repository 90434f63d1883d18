"""What is stored and logged of an exception: its type's name, its message and its traceback, each
cut to length and made storable text on every backend. None of it ever raises."""

from __future__ import annotations

import traceback

from conveyor.model.text import cut, storable_text
from conveyor.ports import ErrorInfo

MAX_TRACEBACK_CHARS = 16_000
MAX_MESSAGE_CHARS = 4_000
"""An error's message and traceback are cut to these lengths (the cut is marked) before they are
stored with a retry or a dead letter: a handler that raises a 5 MB message must not write it
into every retry and the dead-letter queue."""


def error_info(error: BaseException) -> ErrorInfo:
    """What is stored of ``error``: its type's name, its message and traceback, each cut to length
    and made storable text on every backend (see :func:`storable_text`).

    Never raises, even for an exception whose ``__str__`` does.
    """
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ in ("builtins", "__main__")
        else (f"{kind.__module__}.{kind.__qualname__}")
    )
    try:
        text = "".join(traceback.format_exception(error))
    except Exception as exc:
        text = f"<traceback could not be formatted: {type(exc).__name__}>"
    if len(text) > MAX_TRACEBACK_CHARS:  # keep the outermost frames and the last line's end
        half = MAX_TRACEBACK_CHARS // 2
        text = f"{text[:half]}\n… [{len(text) - 2 * half:,} characters cut] …\n{text[-half:]}"
    return ErrorInfo(storable_text(name), _message(error), storable_text(text))


def _message(error: BaseException) -> str:
    """``error``'s message as :func:`error_info` stores it: cut to length, storable, never raising."""
    kind = type(error)
    try:
        message = str(error) or kind.__name__
    except Exception as exc:  # a broken __str__ must not cost the job its dead letter
        message = f"<{kind.__name__} whose str() raised {type(exc).__name__}>"
    return storable_text(cut(message, MAX_MESSAGE_CHARS))


def describe_error(error: BaseException) -> str:
    """``Type: message`` for a history entry or a log line, as cut and escaped as :func:`error_info`
    (without formatting the traceback, which a retry's history entry and log line do not show)."""
    return f"{type(error).__name__}: {_message(error)}"
