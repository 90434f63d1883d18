"""Backends, loaded lazily by URL scheme so a missing driver only matters to those who use it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from conveyor.model.errors import ConfigurationError
from conveyor.ports import Backend

DEFAULT_IDEMPOTENCY_RETENTION = 24 * 3600.0
"""How long an idempotency key stays taken after its job finished, unless a backend is told otherwise."""

# scheme -> (module, class, extra that installs its driver)
_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("conveyor.backends.memory", "MemoryBackend", None),
    "sqlite": ("conveyor.backends.sqlite", "SQLiteBackend", None),
    "redis": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "rediss": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "postgresql": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
    "postgres": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
    "nats": ("conveyor.backends.nats", "NatsBackend", "nats"),
}


# schemes named in the design whose backends are not built yet
_PLANNED = {"amqp": "RabbitMQ", "amqps": "RabbitMQ"}


def url_options(url: str) -> dict[str, str]:
    """The query string of a backend URL as a dict (``?poll_interval=0.5&prefix=x``)."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def number_option(given: float | None, options: Mapping[str, str], name: str, default: float) -> float:
    """A numeric backend option: the keyword ``given``, else the URL's ``name``, else ``default``;
    a URL value that is not a number is a :class:`ConfigurationError` naming it."""
    if given is not None:
        return float(given)
    if name not in options:
        return default
    try:
        return float(options[name])
    except ValueError:
        raise ConfigurationError(f"URL option {name}={options[name]!r} is not a number") from None


def open_backend(url: str, **options: Any) -> Backend:
    """Create (not connect) the backend for ``url``; the driver is imported only now."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in _PLANNED:
        raise ConfigurationError(
            f"the {_PLANNED[scheme]} backend ({scheme}://) is not available in this version of conveyor; "
            "use sqlite://, redis://, postgresql:// or nats://"
        )
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(f"unknown backend URL scheme {scheme!r} in {url!r}; known: {known}")
    module_name, class_name, extra = _SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra is None or (exc.name or "").startswith("conveyor"):
            raise
        package = (exc.name or "").split(".")[0]  # the distribution to install, not its submodule
        raise ConfigurationError(
            f"the {scheme}:// backend needs the {package!r} package: pip install 'conveyor[{extra}]'"
        ) from exc
    backend_class = getattr(module, class_name)
    backend: Backend = backend_class(url, **options)
    return backend
