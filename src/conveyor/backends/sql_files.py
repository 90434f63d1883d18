"""The SQL files of the SQL backends, read the same way for SQLite and PostgreSQL.

A queries file holds named statements, each started by a ``-- name: lease`` line and running to
the next one; before the first name only comments and blank lines may stand. A migrations
directory holds one ``NNNN_what.sql`` script per schema version, numbered 1, 2, 3, ... with no
gap and no number twice: a second file of one version would otherwise be applied in an order
that depends on its name, or silently replace the first. Both are checked when the backend
module is imported, so a broken file fails every run, not the first database that needs it.
"""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable
from typing import NamedTuple

from conveyor.model.errors import ConfigurationError

_NAME_LINE = re.compile(r"--\s*name\s*:")
_NAME = re.compile(r"-- name: (\w+)\s*", re.ASCII)
_MIGRATION = re.compile(r"(\d{4})_(\w+)\.sql", re.ASCII)


class Migration(NamedTuple):
    """One schema script: the version it brings the schema to, its file name and its SQL."""

    version: int
    name: str
    text: str


def parse_queries(text: str, source: str) -> dict[str, str]:
    """The statements of a queries file by name, in file order, each stripped of outer blanks.

    ``source`` names the file in the ConfigurationError raised for a malformed line, a name
    given twice or a name without a statement.
    """
    queries: dict[str, str] = {}
    started: dict[str, int] = {}
    name: str | None = None
    body: list[str] = []

    def finish() -> None:
        if name is not None:
            statement = "\n".join(body).strip()
            if not _has_code(statement):
                raise ConfigurationError(f"{source}:{started[name]}: query {name!r} has no statement")
            queries[name] = statement

    for number, line in enumerate(text.splitlines(), start=1):
        if _NAME_LINE.match(line):
            found = _NAME.fullmatch(line)
            if found is None:
                raise ConfigurationError(
                    f"{source}:{number}: malformed name line {line!r}, expected '-- name: <word>'"
                )
            finish()
            name, body = found[1], []
            if name in started:
                raise ConfigurationError(
                    f"{source}:{number}: query {name!r} is already defined on line {started[name]}"
                )
            started[name] = number
        elif name is not None:
            body.append(line)
        elif _has_code(line):
            raise ConfigurationError(f"{source}:{number}: statement before the first '-- name:' line")
    finish()
    return queries


def load_queries(path: Traversable) -> dict[str, str]:
    """:func:`parse_queries` of the file at ``path``."""
    return parse_queries(path.read_text(encoding="utf-8"), str(path))


def load_migrations(directory: Traversable) -> list[Migration]:
    """The ``NNNN_what.sql`` scripts of ``directory`` by version, which must run 1, 2, 3, ...

    A ``.sql`` file named otherwise, two files of one version, a gap or no script at all raises
    ConfigurationError naming the files; files not ending in ``.sql`` are ignored.
    """
    by_version: dict[int, list[str]] = {}
    problems: list[str] = []
    entries = {entry.name: entry for entry in directory.iterdir() if entry.is_file()}
    for file_name in sorted(entries):
        if not file_name.endswith(".sql"):
            continue
        found = _MIGRATION.fullmatch(file_name)
        if found is None:
            problems.append(f"{file_name} is not named NNNN_what.sql (four digits, a word)")
        else:
            by_version.setdefault(int(found[1]), []).append(file_name)
    for version, names in sorted(by_version.items()):
        if len(names) > 1:
            problems.append(f"version {version} is given by more than one file: {', '.join(names)}")
    versions = sorted(by_version)
    if not versions and not problems:
        problems.append("no NNNN_what.sql migration in it")
    expected = 1
    for version in versions:
        if version != expected:
            after = f"after {by_version[expected - 1][0]}" if expected > 1 else "first"
            missing = ", ".join(str(v) for v in range(expected, version))
            problems.append(
                f"{by_version[version][0]} comes {after}: versions run 1, 2, 3, ... "
                f"without a gap, and {missing} is missing"
            )
        expected = version + 1
    if problems:
        raise ConfigurationError(f"migrations in {directory}: " + "; ".join(problems))
    return [
        Migration(version, names[0], entries[names[0]].read_text(encoding="utf-8"))
        for version, names in sorted(by_version.items())
    ]


def _has_code(text: str) -> bool:
    """Whether ``text`` holds anything but blank lines and ``--`` comments."""
    return any(line.strip() and not line.lstrip().startswith("--") for line in text.splitlines())
