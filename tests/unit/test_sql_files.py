"""The one reader of the SQL backends' files: named queries and numbered migrations."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest

from conveyor.backends.sql_files import Migration, load_migrations, load_queries, parse_queries
from conveyor.model.errors import ConfigurationError


def migrations_dir(tmp_path: Path, scripts: dict[str, str]) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in scripts.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


# migrations


def test_migrations_are_ordered_by_version_not_by_name(tmp_path: Path) -> None:
    directory = migrations_dir(
        tmp_path,
        {"0002_alpha.sql": "SELECT 2;\n", "0001_zeta.sql": "SELECT 1;\n", "0003_beta.sql": "SELECT 3;"},
    )
    assert load_migrations(directory) == [
        Migration(1, "0001_zeta.sql", "SELECT 1;\n"),
        Migration(2, "0002_alpha.sql", "SELECT 2;\n"),
        Migration(3, "0003_beta.sql", "SELECT 3;"),
    ]


def test_versions_past_nine_sort_as_numbers(tmp_path: Path) -> None:
    directory = migrations_dir(tmp_path, {f"{v:04d}_step.sql": f"-- {v}" for v in range(1, 12)})
    assert [m.version for m in load_migrations(directory)] == list(range(1, 12))


def test_a_duplicate_version_is_refused_naming_both_files(tmp_path: Path) -> None:
    directory = migrations_dir(
        tmp_path,
        {"0001_initial.sql": "", "0002_commit_batch.sql": "", "0002_lease.sql": ""},
    )
    with pytest.raises(ConfigurationError, match=r"version 2 .*0002_commit_batch\.sql, 0002_lease\.sql"):
        load_migrations(directory)


def test_a_gap_in_the_versions_is_refused(tmp_path: Path) -> None:
    directory = migrations_dir(tmp_path, {"0001_initial.sql": "", "0003_later.sql": ""})
    with pytest.raises(
        ConfigurationError, match=r"0003_later\.sql comes after 0001_initial\.sql.* 2 is missing"
    ):
        load_migrations(directory)


def test_versions_start_at_one(tmp_path: Path) -> None:
    directory = migrations_dir(tmp_path, {"0002_initial.sql": ""})
    with pytest.raises(ConfigurationError, match=r"0002_initial\.sql comes first.* 1 is missing"):
        load_migrations(directory)


@pytest.mark.parametrize(
    "bad_name", ["1_initial.sql", "0002-lease.sql", "0002_.sql", "initial.sql", "00002_x.sql", "0002_a b.sql"]
)
def test_a_badly_named_sql_file_is_refused(tmp_path: Path, bad_name: str) -> None:
    directory = migrations_dir(tmp_path, {"0001_initial.sql": "", bad_name: ""})
    with pytest.raises(ConfigurationError, match=re.escape(f"{bad_name} is not named NNNN_what.sql")):
        load_migrations(directory)


def test_files_that_are_not_sql_are_ignored(tmp_path: Path) -> None:
    directory = migrations_dir(tmp_path, {"0001_initial.sql": "SELECT 1;", "README.md": "notes"})
    (directory / "__pycache__").mkdir()
    assert [m.name for m in load_migrations(directory)] == ["0001_initial.sql"]


def test_a_directory_without_migrations_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no NNNN_what\.sql migration"):
        load_migrations(migrations_dir(tmp_path, {}))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_each_sql_backend_has_one_migration_per_version(backend: str) -> None:
    migrations = load_migrations(files(f"conveyor.backends.{backend}") / "migrations")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_initial.sql"


def test_the_postgres_initial_migration_creates_the_tables_before_the_functions() -> None:
    [initial, *_] = load_migrations(files("conveyor.backends.postgres") / "migrations")
    jobs, lease, commit_batch = (
        initial.text.index(statement)
        for statement in (
            "CREATE TABLE {schema}.jobs",
            "CREATE FUNCTION {schema}.lease(",
            "CREATE FUNCTION {schema}.commit_batch(",
        )
    )
    assert jobs < lease < commit_batch


# queries


def test_queries_are_named_statements_in_file_order() -> None:
    text = (
        "-- The queries of a backend.\n\n"
        "-- name: lease\n-- why it is so\nSELECT 1\nFROM jobs;\n\n"
        "-- name: commit   \nUPDATE jobs SET x = 1;\n"
    )
    queries = parse_queries(text, "queries.sql")
    assert list(queries) == ["lease", "commit"]
    assert queries == {"lease": "-- why it is so\nSELECT 1\nFROM jobs;", "commit": "UPDATE jobs SET x = 1;"}


def test_a_duplicate_query_name_is_refused_with_both_lines() -> None:
    text = "-- name: lease\nSELECT 1;\n-- name: commit\nSELECT 2;\n-- name: lease\nSELECT 3;\n"
    with pytest.raises(
        ConfigurationError, match=r"queries\.sql:5: query 'lease' is already defined on line 1"
    ):
        parse_queries(text, "queries.sql")


@pytest.mark.parametrize("line", ["-- name:lease", "-- name: two words", "--name: lease", "-- name:"])
def test_a_malformed_name_line_is_refused_with_its_line(line: str) -> None:
    text = f"-- name: first\nSELECT 1;\n{line}\nSELECT 2;\n"
    with pytest.raises(ConfigurationError, match=r"queries\.sql:3: malformed name line"):
        parse_queries(text, "queries.sql")


def test_a_statement_before_the_first_name_is_refused() -> None:
    text = "-- header\nSELECT 0;\n-- name: first\nSELECT 1;\n"
    with pytest.raises(ConfigurationError, match=r"queries\.sql:2: statement before the first"):
        parse_queries(text, "queries.sql")


def test_a_name_without_a_statement_is_refused() -> None:
    text = "-- name: empty\n-- only a comment\n\n-- name: full\nSELECT 1;\n"
    with pytest.raises(ConfigurationError, match=r"queries\.sql:1: query 'empty' has no statement"):
        parse_queries(text, "queries.sql")


def test_a_queries_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.sql"
    path.write_text("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=re.escape(f"{path}:3")):
        load_queries(path)
