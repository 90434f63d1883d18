"""The pytest plugin (entry point ``pytest11``, on whenever conveyor is installed): fixtures to
test an app's handlers on ``memory://`` with a :class:`~conveyor.testing.FakeClock`.

* ``fake_clock``: a :class:`~conveyor.testing.FakeClock`.
* ``conveyor_app``: a :class:`~conveyor.testing.app.TestApp` of the app named by the ini option
  ``conveyor_app = "module:attribute"`` (or ``pytest --conveyor-app module:attribute``), on the
  ``fake_clock``. Not connected: enter it in the test (``async with conveyor_app as app:``), or
  let :meth:`~conveyor.testing.app.TestApp.run_until_idle` do it. Override the fixture in a
  ``conftest.py`` to build it another way (``TestApp([orders], resources={...})``).

Nothing of conveyor is imported until a fixture is used, so the plugin costs other projects in the
same environment nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conveyor.testing.app import TestApp
    from conveyor.testing.clock import FakeClock

INI = "conveyor_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI, "module:attribute naming the conveyor App the conveyor_app fixture tests")
    parser.addoption(
        "--conveyor-app",
        dest=INI,
        default=None,
        metavar="MODULE:ATTRIBUTE",
        help="the conveyor App the conveyor_app fixture tests (in place of the ini option)",
    )


@pytest.fixture
def fake_clock() -> FakeClock:
    """Time that moves only when the test says so (``fake_clock.advance(5)``)."""
    from conveyor.testing.clock import FakeClock

    return FakeClock()


@pytest.fixture
def conveyor_app(request: pytest.FixtureRequest, fake_clock: FakeClock) -> TestApp:
    """The app named by the ``conveyor_app`` ini option, on ``memory://`` and ``fake_clock``."""
    from conveyor.app import App
    from conveyor.testing.app import TestApp

    spec = request.config.getoption(INI) or request.config.getini(INI)
    if not spec:
        raise pytest.UsageError(
            "the conveyor_app fixture needs the app to test: set conveyor_app = 'module:attribute' "
            "in the pytest configuration (or pass --conveyor-app), or define a conveyor_app fixture "
            "of your own returning conveyor.testing.TestApp(...)"
        )
    module_name, _, attribute = str(spec).partition(":")
    app = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(app, App):
        raise pytest.UsageError(f"conveyor_app = {spec!r} names {type(app).__name__}, not a conveyor App")
    return TestApp(app, clock=fake_clock)
