"""psycopg's exceptions translated into conveyor's, at the backend edge.

A database or role that does not exist, or a refused password, is a :class:`ConfigurationError`
(fix the URL or the server); a server that cannot be reached or dropped the connection is
:class:`BackendUnavailableError` (retry later); content the server refuses to store is
:class:`CommitRejectedError` (the committer narrows the batch down to the culprit).
"""

from __future__ import annotations

import re
import struct

import psycopg
from psycopg_pool import PoolTimeout

from conveyor.model.errors import (
    BackendError,
    BackendUnavailableError,
    CommitRejectedError,
    ConfigurationError,
    ConveyorError,
)

# SQLSTATEs meaning "the server is not there for us": connection exceptions (08), operator
# intervention such as a shutdown or pg_terminate_backend (57P) or a cancelled or timed-out
# statement (57014), insufficient resources (53: too many connections, disk full, out of memory),
# a lock wait timed out (55P03). A commit failing so is retried whole, not split to find a culprit.
_UNAVAILABLE_STATES = ("08", "57P", "57014", "53", "55P03")
# SQLSTATEs meaning "this content cannot be stored": data exceptions (22: a NUL in text, a value
# out of range) and program limits (54: a key too long for its index).
_REJECTED_STATES = ("22", "54")

# The server's refusals of a login. libpq gives no SQLSTATE for an error while connecting (3D000
# invalid_catalog_name, 28000 invalid_authorization_specification, 28P01 invalid_password), only
# the server's message, in English unless the server's lc_messages says otherwise.
_MISSING = re.compile(r'\b(database|role) "([^"]*)" does not exist')
_LOGIN_REFUSED = re.compile(
    r'password authentication failed for user "([^"]*)"|no pg_hba\.conf entry|'
    r"password authentication failed|(?:Peer|Ident) authentication failed"
)
_CONFIGURATION_STATES = ("3D000", "28000", "28P01")


def _refused_login(exc: psycopg.OperationalError) -> ConfigurationError | None:
    """The configuration error for a login the server refused: retrying cannot fix it."""
    text = str(exc)
    if missing := _MISSING.search(text):
        kind, name = missing.groups()
        if kind == "database":
            advice = f'create it (CREATE DATABASE "{name}") or name an existing database in the URL'
        else:
            advice = f'create it (CREATE ROLE "{name}" LOGIN) or name an existing role in the URL'
        return ConfigurationError(f'PostgreSQL {kind} "{name}" does not exist: {advice}')
    if _LOGIN_REFUSED.search(text) or exc.sqlstate in _CONFIGURATION_STATES:
        detail = text.rsplit("FATAL:", 1)[-1].strip()
        return ConfigurationError(
            f"PostgreSQL refused the login ({detail}): check the user and password in the URL "
            "and the server's pg_hba.conf"
        )
    return None


def translate(exc: BaseException) -> ConveyorError:
    """conveyor's error for a psycopg (or pool) exception; the caller chains ``exc``.

    A database or role that does not exist, or a refused password, is a
    :class:`ConfigurationError` (fix the URL or the server); a server that cannot be reached or
    dropped the connection is :class:`BackendUnavailableError` (retry later).
    """
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError | OSError):
        return BackendUnavailableError(f"PostgreSQL is unreachable: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        if refused := _refused_login(exc):
            return refused
        state = exc.sqlstate
        if state is None or state.startswith(_UNAVAILABLE_STATES):
            return BackendUnavailableError(f"PostgreSQL connection lost: {exc}")
    return BackendError(f"PostgreSQL error: {exc}")


UNSENDABLE = (UnicodeEncodeError, struct.error, OverflowError)
"""What encoding a commit's arguments raises for a value that cannot be sent (a lone surrogate,
an integer past 64 bits): nothing was sent."""


def rejected_content(exc: BaseException) -> CommitRejectedError | None:
    """The error for a commit call whose content the server refused or that could not be sent
    (see :mod:`conveyor.ports`); None for any other failure."""
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith(_REJECTED_STATES):
        return CommitRejectedError(f"PostgreSQL cannot store this commit batch: {exc}")
    if isinstance(exc, UNSENDABLE):
        return CommitRejectedError(f"PostgreSQL cannot be sent a value of this commit batch: {exc}")
    return None
