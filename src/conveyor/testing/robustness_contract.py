"""The robustness contract: one bad job fails alone, and bad input never stops a worker.

Each test feeds a worker something hostile (a value the backend cannot store, a broken envelope,
a handler that will not stop) next to good jobs, and checks that the bad job gets a dead letter
with its own reason on its first chance while everything else flows. Subclass
:class:`RobustnessContract` and provide ``backend_url`` as for
:class:`~conveyor.testing.runtime_contract.RuntimeContract`.
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor import App, Context, Lifecycle, Service
from conveyor.runtime.worker import MAX_MESSAGE_CHARS
from conveyor.testing import running, wait_until
from conveyor.testing.runtime_contract import AppFixtures


class RobustnessContract(AppFixtures):
    """Every backend passes these unchanged."""

    # what is stored of an error

    async def test_error_text_is_capped_and_storable(self, make_app: Callable[..., App]) -> None:
        svc = Service("svc")

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise ValueError("no text for you")

        errors: dict[str, Exception] = {
            "huge": RuntimeError("x" * 5_000_000),
            "nul": RuntimeError("before\x00after"),
            "surrogate": RuntimeError("sku:a\ud800b"),
            "unprintable": Unprintable(),
        }

        @svc.queue_worker("fails", lifecycle=Lifecycle(max_attempts=1))
        async def fails(ctx: Context, job: dict[str, str]) -> None:
            raise errors[job["error"]]

        app = make_app(svc)
        async with running(app):
            for name in errors:
                await app.enqueue("fails", {"error": name})
            dead = await wait_until(lambda: _at_least(app.dead_letters("fails").list(), len(errors)))
        by_kind = {_payload(entry.body)["error"]: entry.error for entry in dead}
        huge = by_kind["huge"]
        assert len(huge.message) < MAX_MESSAGE_CHARS + 100 and "4,996,000 characters cut" in huge.message
        assert huge.traceback is not None and len(huge.traceback) < 20_000
        assert by_kind["nul"].message == "before\\x00after"
        assert by_kind["surrogate"].message == "sku:a\\ud800b"
        assert "str() raised ValueError" in by_kind["unprintable"].message


def _payload(body: bytes) -> dict[str, str]:
    import orjson

    payload: dict[str, str] = orjson.loads(body)["payload"]
    return payload


async def _at_least(listing: object, count: int) -> object:
    items = await listing  # type: ignore[misc]
    return items if len(items) >= count else None
