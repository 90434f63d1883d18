"""The SQL of the SQLite backend, read once at import from the ``.sql`` files beside this module.

``queries.sql`` holds named statements (``-- name: lease`` starts one); ``migrations/NNNN_*.sql``
are the schema scripts, one per schema version (the rules of both are in ``sql_files``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from conveyor.backends.sql_files import Migration, load_migrations, load_queries

_HERE = files(__package__)

# SQLite refuses compound selects of more than 500 terms; past this many queues lease() uses the
# slower single-statement selection instead of one indexed sub-select per queue.
MAX_QUEUES_PER_COMPOUND = 200


QUERIES: dict[str, str] = load_queries(_HERE / "queries.sql")

MIGRATIONS: list[Migration] = load_migrations(_HERE / "migrations")
"""The schema scripts by version; each brings the previous version to its own."""

SCHEMA_VERSION = MIGRATIONS[-1].version
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
