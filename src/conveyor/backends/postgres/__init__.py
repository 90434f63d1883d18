"""The PostgreSQL backend (``postgresql://``): install with ``pip install 'conveyor[postgres]'``."""

from conveyor.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
