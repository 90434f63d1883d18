"""The pytest plugin, as a user's suite sees it: run by pytester on a small app of its own."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SHOP = """
from typing import Any

from conveyor import App, Context, Retry, Service

svc = Service("shop")


@svc.queue_worker("signup", emits=["signed_up"])
async def signup(ctx: Context, job: dict[str, Any]) -> None:
    await ctx.emit("signed_up", job)


svc.subscription("signed_up", enqueue="welcome_email")


@svc.queue_worker("welcome_email", enqueues=["follow_up"])
async def welcome_email(ctx: Context, job: dict[str, Any]) -> None:
    if ctx.job.attempt == 1:
        raise Retry(delay=30)  # the mail server is down; the FakeClock skips the wait
    await ctx.enqueue("follow_up", job, delay=2 * 86400)


@svc.queue_worker("follow_up", emits=["followed_up"])
async def follow_up(ctx: Context, job: dict[str, Any]) -> None:
    await ctx.emit("followed_up", job)


@svc.schedule("hourly_report", every=3600)
async def hourly_report(ctx: Context) -> None:
    await ctx.states.set("reports", (await ctx.states.get("reports", 0)) + 1)


app = App([svc], backend="sqlite:///never-opened-by-the-tests.db")
"""

TESTS = """
import pytest

from conveyor.testing import TestApp

PATH = ["signup", "(signed_up)", "welcome_email", "follow_up", "(followed_up)"]


async def test_the_path_runs_through_a_retry_and_a_two_day_delay_at_once(conveyor_app, fake_clock):
    start = fake_clock.now()
    async with conveyor_app as app:
        await app.enqueue("signup", {"user": "ann"}, correlation_id="ann")
        moved = await app.run_until_idle()
        await app.assert_workflow("ann", path=PATH, state="completed")
    assert moved == pytest.approx(30 + 2 * 86400, abs=1.0)
    assert fake_clock.now() == start + moved


async def test_assert_workflow_says_what_differs(conveyor_app):
    async with conveyor_app as app:
        await app.enqueue("signup", {"user": "bob"}, correlation_id="bob")
        await app.run_until_idle()
        with pytest.raises(AssertionError, match="path signup → .*\\\\n    expected signup → nothing"):
            await app.assert_workflow("bob", path=["signup", "nothing"])
        with pytest.raises(AssertionError, match="state 'completed', expected 'failed'"):
            await app.assert_workflow("bob", state="failed")


async def test_schedule_ticks_fire_only_within_the_horizon_given(conveyor_app):
    async with conveyor_app as app:
        await app.run_until_idle()
        assert await app.states.get("reports", 0) == 0
        await app.run_until_idle(within=3 * 3600)
        assert await app.states.get("reports") == 3


async def test_within_bounds_the_jump_to_delayed_jobs(conveyor_app):
    async with conveyor_app as app:
        await app.enqueue("signup", {"user": "cy"}, correlation_id="cy")
        await app.run_until_idle(within=60)  # the retry, not the follow-up two days later
        status = await app.assert_workflow("cy", path=["signup", "(signed_up)", "welcome_email"])
        assert status.current == ["follow_up"]


async def test_the_app_under_test_is_a_copy_on_memory(conveyor_app):
    import shop_app

    assert conveyor_app.backend_url == "memory://"
    assert shop_app.app.backend_url.startswith("sqlite:")
    assert conveyor_app.registry.services == shop_app.app.registry.services
    assert isinstance(conveyor_app, TestApp)
"""


INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(shop_app=SHOP, test_shop=TESTS)
    pytester.syspathinsert()
    return pytester


def test_the_plugin_fixtures_test_an_app_named_in_the_ini(suite: pytest.Pytester) -> None:
    suite.makeini(INI + "conveyor_app = shop_app:app\n")
    result = suite.runpytest("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_the_app_can_be_named_on_the_command_line(suite: pytest.Pytester) -> None:
    suite.makeini(INI)
    result = suite.runpytest("--conveyor-app", "shop_app:app", "-k", "copy_on_memory", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


def test_without_an_app_named_the_fixture_says_how_to_name_one(suite: pytest.Pytester) -> None:
    suite.makeini(INI)
    result = suite.runpytest("-k", "copy_on_memory", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*conveyor_app = 'module:attribute'*"])
