"""conveyor.settings: what the environment sets, in which precedence, and how bad values are told."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import App, Service
from conveyor.model.errors import ConfigurationError
from conveyor.runtime.worker import WorkerConfig
from conveyor.settings import DEFAULT_URL, ROLE_NAMES, Settings, load_settings

TOKEN_A = "a-long-random-admin-token"
TOKEN_R = "a-long-random-reader-token"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "CONCURRENCY", "LOG_LEVEL", "API_TOKENS", "SERVE_PORT", "METRICS_PORT"):
        monkeypatch.delenv(f"CONVEYOR_{name}", raising=False)


def test_every_setting_is_read_from_its_conveyor_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", "8")
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "debug")
    monkeypatch.setenv("CONVEYOR_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("CONVEYOR_METRICS_PORT", "9464")
    monkeypatch.setenv("CONVEYOR_SERVE_PORT", "9000")
    settings = load_settings()
    assert (settings.url, settings.concurrency, settings.log_level) == (
        "redis://127.0.0.1:6379/0",
        8,
        "DEBUG",
    )
    assert (settings.metrics_host, settings.metrics_port, settings.serve_port) == ("0.0.0.0", 9464, 9000)


def test_a_value_given_beats_the_environment_which_beats_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().serve_port == 8080
    monkeypatch.setenv("CONVEYOR_SERVE_PORT", "9000")
    assert load_settings().serve_port == 9000
    assert load_settings(serve_port=9100).serve_port == 9100
    assert load_settings(serve_port=None).serve_port == 9000  # None: not given


def test_api_tokens_parse_as_token_role_pairs_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKENS", f"{TOKEN_A}:admin, {TOKEN_R}:READ")
    settings = Settings()
    assert settings.token_role(TOKEN_A) == "admin"
    assert settings.token_role(TOKEN_R) == "read"
    assert settings.token_role("a-long-random-unknown-token") is None
    assert settings.token_roles() == {TOKEN_A: "admin", TOKEN_R: "read"}
    assert TOKEN_A not in repr(settings) and TOKEN_A not in str(settings.model_dump())
    monkeypatch.setenv("CONVEYOR_API_TOKENS", f'{{"{TOKEN_A}": "operate"}}')
    assert Settings().token_role(TOKEN_A) == "operate"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CONVEYOR_API_TOKENS", "short:admin", "at least 16 characters"),
        ("CONVEYOR_API_TOKENS", f"{TOKEN_A}:boss", "unknown API role 'boss'"),
        ("CONVEYOR_API_TOKENS", TOKEN_A, "token:role"),
        ("CONVEYOR_CONCURRENCY", "many", "CONVEYOR_CONCURRENCY"),
        ("CONVEYOR_CONCURRENCY", "0", "greater than or equal to 1"),
        ("CONVEYOR_LOG_LEVEL", "loud", "CONVEYOR_LOG_LEVEL"),
    ],
)
def test_a_bad_value_is_a_configuration_error_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as raised:
        load_settings()
    assert message in str(raised.value)
    assert value not in str(raised.value) or value == "0"  # a rejected token is not echoed


def test_an_app_without_a_backend_reads_conveyor_url_else_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    svc = Service("s")
    app = App([svc])
    assert (app.backend_url, app.backend_origin) == (DEFAULT_URL, "default")
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    app = App([svc])
    assert (app.backend_url, app.backend_origin) == ("memory://", "environment")
    coded = App([svc], backend=f"sqlite:///{tmp_path}/coded.db")  # code beats the environment
    assert (coded.backend_origin, coded.backend_url) == ("code", f"sqlite:///{tmp_path}/coded.db")
    coded.use_backend("memory://")  # and a flag beats code
    assert (coded.backend_origin, coded.backend_url, coded.runtime.backend) == (
        "cli",
        "memory://",
        coded.backend,
    )


def test_concurrency_comes_from_the_environment_unless_the_app_gives_a_worker_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = Service("s")
    assert App([svc], backend="memory://").worker_config.concurrency == WorkerConfig().concurrency
    monkeypatch.setenv("CONVEYOR_CONCURRENCY", "3")
    assert App([svc], backend="memory://").worker_config.concurrency == 3
    given = App([svc], backend="memory://", worker=WorkerConfig(concurrency=7))
    assert given.worker_config.concurrency == 7


async def test_the_backend_of_a_connected_app_cannot_be_changed() -> None:
    app = App([Service("s")], backend="memory://")
    async with app:
        with pytest.raises(ConfigurationError, match="connected"):
            app.use_backend("memory://")


def test_the_role_names_are_the_servers_roles_lowest_first() -> None:
    from conveyor.server.auth import Role

    assert tuple(role.value for role in sorted(Role, key=lambda role: role.rank)) == ROLE_NAMES


def test_an_app_reads_only_its_own_settings_so_a_bad_api_token_does_not_stop_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKENS", "short:admin")
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    assert App([Service("svc")]).backend_url == "memory://"
    with pytest.raises(ConfigurationError, match="CONVEYOR_API_TOKENS"):
        load_settings()
