"""Settings outside code: the environment (``CONVEYOR_*``) and the command line, on pydantic-settings.

Precedence, highest first:

1. a command-line flag (``conveyor --backend URL``, ``worker --concurrency 8``);
2. a value given in code (``App(backend=...)``, ``App(worker=WorkerConfig(concurrency=8))``);
3. the environment (``CONVEYOR_URL``, ``CONVEYOR_CONCURRENCY``, ...);
4. the default.

Code beats the environment because a value written in code is a decision about that one app
(a test on ``memory://``), while a variable is inherited by every process of a shell or a
container: with the environment first, ``CONVEYOR_URL`` exported for a deployment would point a
test suite's apps at production. This is pydantic-settings' own order (initialiser arguments over
environment variables), and Dramatiq and FastStream take their broker only from code. Celery is
the one peer that lets ``CELERY_BROKER_URL`` override the configuration. To configure an app from
the environment, leave the value out of code (``App([svc])`` reads ``CONVEYOR_URL``); an operator
overrides either with a flag.

>>> Settings(url="memory://", concurrency=4).concurrency
4
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor.model.errors import ConfigurationError

DEFAULT_SQLITE_FILE = "conveyor.db"
DEFAULT_URL = f"sqlite:///{DEFAULT_SQLITE_FILE}"
"""The backend of an app that names none, with ``CONVEYOR_URL`` unset: a file in the current directory."""

ENV_PREFIX = "CONVEYOR_"

T = TypeVar("T", bound=BaseSettings)

RoleName = Literal["read", "operate", "admin"]
"""An API role, lowest first (``conveyor.server.auth.Role`` holds what each may do)."""

ROLE_NAMES: tuple[str, ...] = get_args(RoleName)

MIN_TOKEN_LENGTH = 16

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


class ApiToken(BaseModel):
    """A bearer token of the HTTP API and the role it grants; the token never shows in a repr."""

    model_config = ConfigDict(frozen=True)

    token: SecretStr
    role: RoleName


class AppSettings(BaseSettings):
    """What an :class:`~conveyor.App` itself reads, when its code leaves it out: only these, so a
    bad value of a setting it does not use (an API token) cannot stop a worker from starting."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", validate_default=True
    )

    url: str | None = Field(
        None, description=f"the backend URL (unset: what the app names, else {DEFAULT_URL})"
    )
    concurrency: int | None = Field(
        None, ge=1, description="jobs a worker runs at once (unset: WorkerConfig's, 50)"
    )


class Settings(AppSettings):
    """What a process of conveyor is configured with, each field read from ``CONVEYOR_<NAME>``.

    A field left ``None`` is unset: what uses it falls back to code or to its own default.
    """

    log_level: LogLevel | None = Field(
        None, description="conveyor's log level (unset: INFO for worker and serve, WARNING for the rest)"
    )
    json_logs: bool = Field(False, description="one JSON object per log record")
    metrics_host: str = Field(
        "127.0.0.1", description="address of the worker's Prometheus endpoint (0.0.0.0: every interface)"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="port of the worker's Prometheus endpoint (unset: none)"
    )
    serve_host: str = Field("127.0.0.1", description="address `conveyor serve` listens on")
    serve_port: int = Field(8080, ge=0, le=65535, description="port `conveyor serve` listens on")
    api_tokens: Annotated[tuple[ApiToken, ...], NoDecode] = Field(
        (),
        description="HTTP API tokens and their roles: token:role,token:role (roles: read, operate, admin)",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        pairs = _token_pairs(value)
        if pairs is None:
            return value
        for token, role in pairs:
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"an API token must be at least {MIN_TOKEN_LENGTH} characters long")
            if role not in ROLE_NAMES:
                raise ValueError(f"unknown API role {role!r}; known: {', '.join(ROLE_NAMES)}")
        return tuple({"token": SecretStr(token), "role": role} for token, role in pairs)

    def token_role(self, token: str) -> RoleName | None:
        """The role ``token`` grants, or None (compared in constant time)."""
        found: RoleName | None = None
        for entry in self.api_tokens:
            if hmac.compare_digest(entry.token.get_secret_value().encode(), token.encode()):
                found = entry.role
        return found

    def token_roles(self) -> dict[str, str]:
        """``{token: role}``, the form ``conveyor.server.create_app(tokens=...)`` takes."""
        return {entry.token.get_secret_value(): entry.role for entry in self.api_tokens}


def _token_pairs(value: Any) -> list[tuple[str, str]] | None:
    """``token:role,token:role``, a JSON object or a mapping as (token, role) pairs; None for
    anything else (pydantic then says what is wrong with it)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        else:
            pairs = []
            for item in filter(None, (part.strip() for part in text.split(","))):
                token, sep, role = item.rpartition(":")
                if not sep or not token:
                    raise ValueError("each item is token:role (roles: read, operate, admin)")
                pairs.append((token, role.strip().lower()))
            return pairs
    if isinstance(value, Mapping):
        return [(str(token), str(role).lower()) for token, role in value.items()]
    return None


def load_settings(**given: Any) -> Settings:
    """The settings: ``given`` (flags and values from code, those that are not None) over the
    environment over the defaults. A bad value is a :class:`ConfigurationError` naming its
    variable, so a command ends with one line.

    >>> load_settings(concurrency=None, serve_port=9000).serve_port
    9000
    """
    return _load(Settings, given)


def load_app_settings() -> AppSettings:
    """The settings an App reads (:class:`AppSettings`), from the environment."""
    return _load(AppSettings, {})


def _load(kind: type[T], given: Mapping[str, Any]) -> T:
    try:
        return kind(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(map(str, error['loc'])).upper()}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


__all__ = [
    "DEFAULT_URL",
    "LOG_LEVELS",
    "ROLE_NAMES",
    "ApiToken",
    "AppSettings",
    "LogLevel",
    "RoleName",
    "Settings",
    "load_app_settings",
    "load_settings",
]
