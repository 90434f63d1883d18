"""The SQL of the SQLite backend, read once at import from the ``.sql`` files beside this module.

``queries.sql`` holds named statements (``-- name: lease`` starts one); ``migrations/NNNN_*.sql``
are the schema scripts, one per schema version (the rules of both are in ``sql_files``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from conveyor.backends.sql_files import Migration, load_migrations, load_queries

_HERE = files(__package__)

# SQLite refuses compound selects of more than 500 terms; past this many lanes lease() uses the
# slower single-statement selection instead of one indexed sub-select per lane.
MAX_LANES_PER_COMPOUND = 200


QUERIES: dict[str, str] = load_queries(_HERE / "queries.sql")

MIGRATIONS: list[Migration] = load_migrations(_HERE / "migrations")
"""The schema scripts by version; each brings the previous version to its own."""

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this code writes and understands."""


@lru_cache(maxsize=256)
def lease_statement(terms: tuple[bool, ...], *, returning: bool) -> str:
    """The lease statement reading one term per entry of ``terms``: a lane of waiting jobs
    (False) or a queue's expired leases (True), with parameters ``:queue{i}``, ``:priority{i}``
    (lanes only) and ``:lease{i}``; past :data:`MAX_LANES_PER_COMPOUND` terms, one selection over
    ``:lanes`` and ``:expired`` instead.

    With ``returning`` it is one ``UPDATE ... RETURNING``; without (SQLite < 3.35) it is the
    ``SELECT`` whose rows the caller then marks leased with ``update_leased``.
    """
    if len(terms) > MAX_LANES_PER_COMPOUND:
        ready = QUERIES["ready_in_many_lanes"]
    else:
        lane, expired = QUERIES["ready_in_lane"], QUERIES["expired_in_queue"]
        ready = "\n    UNION ALL\n    ".join(
            (expired if is_expired else lane).format(i=i) for i, is_expired in enumerate(terms)
        )
    return QUERIES["lease" if returning else "lease_select"].format(ready=ready)


@lru_cache(maxsize=8)
def leases_statement(*, of_queue: bool, after: bool) -> str:
    """The ``leases`` query of one queue or of all, from the first lease or after ``:after``."""
    return QUERIES["leases"].format(
        where="queue = :queue AND" if of_queue else "", after="AND id > :after" if after else ""
    )


DEAD_LETTER_CONDITIONS = ("queue", "error_type", "since", "until", "text", "before")
"""The conditions a dead-letter query may hold (``dead_where_<name>`` in ``queries.sql``)."""


@lru_cache(maxsize=128)
def dead_letters_statement(name: str, conditions: frozenset[str]) -> str:
    """``find_dead_letters`` or ``count_dead_letters`` with the given conditions."""
    where = "\n".join(QUERIES[f"dead_where_{c}"] for c in DEAD_LETTER_CONDITIONS if c in conditions)
    return QUERIES[name].format(where=where)
