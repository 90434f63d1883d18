"""The SQL of the SQLite backend, read once at import from the ``.sql`` files beside this module.

``queries.sql`` holds named statements (``-- name: lease`` starts one); ``migrations/NNNN_*.sql``
are the schema scripts, one per schema version.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

_HERE = files(__package__)
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

# SQLite refuses compound selects of more than 500 terms; past this many queues lease() uses the
# slower single-statement selection instead of one indexed sub-select per queue.
MAX_QUEUES_PER_COMPOUND = 200


def _parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES: dict[str, str] = _parse(_HERE.joinpath("queries.sql").read_text(encoding="utf-8"))


def _migrations() -> dict[int, str]:
    scripts = {}
    for entry in _HERE.joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            scripts[version] = entry.read_text(encoding="utf-8")
    return dict(sorted(scripts.items()))


MIGRATIONS: dict[int, str] = _migrations()
"""Schema version → the script that brings the previous version to it."""

SCHEMA_VERSION = max(MIGRATIONS)
"""The schema version this code writes and understands."""


@lru_cache(maxsize=64)
def lease_statement(queue_count: int, *, returning: bool) -> str:
    """The lease statement for ``queue_count`` queues (parameters ``:queue{i}`` and ``:lease{i}``).

    With ``returning`` it is one ``UPDATE ... RETURNING``; without (SQLite < 3.35) it is the
    ``SELECT`` whose rows the caller then marks leased with ``update_leased``.
    """
    if queue_count > MAX_QUEUES_PER_COMPOUND:
        ready = QUERIES["ready_in_many_queues"]
    else:
        template = QUERIES["ready_in_queue"]
        ready = "\n    UNION ALL\n    ".join(template.format(i=i) for i in range(queue_count))
    return QUERIES["lease" if returning else "lease_select"].format(ready=ready)
