"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a live server
running the demo's order fulfillment on a SQLite file: log in, see the orders, open a compensated
one, redrive its dead letter, approve a pending gate, and watch the pages update by themselves.

Skipped when /usr/bin/chromium is absent, unless CI=true (then it fails: .ci/run installs it).
Saves its screenshots in the test's temporary directory, or where CONVEYOR_SCREENSHOTS says
(``CONVEYOR_SCREENSHOTS=docs/screenshots`` retakes the README's).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import App, Context, Service, WorkerConfig, Workflow
from conveyor.demo import demo_orders
from conveyor.examples import order_fulfillment as demo
from tests.conftest import IN_CI
from tests.server.live import live_server

CHROMIUM = Path("/usr/bin/chromium")
ADMIN, READER = "dashboard-admin-token-0123", "dashboard-reader-token-0123"
ORDERS = 10
WAIT = 20_000
"""Milliseconds a condition may take in the browser (the server's live stream ticks every 2 s)."""

if not CHROMIUM.exists():
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing (CI=true: .ci/run installs Debian's chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

# The demo's orders, and beside them a refund that waits for a human: the demo has no approval
# gate of its own.
support = Service("support")
support.approval_gate("refund", timeout=timedelta(hours=1))


@support.queue_worker("request_refund")
async def request_refund(ctx: Context, job: dict[str, Any]) -> None:
    await ctx.request_approval("refund", job)


@support.subscription("refund_approved", emits=["refund_issued"])
async def issue_refund(ctx: Context, event: dict[str, Any]) -> None:
    await ctx.emit("refund_issued", {})


REFUND = Workflow("refund", start="refund_requested", completed=["refund_issued"], failed=["refund_rejected"])


def shop(backend: str) -> App:
    resources = {
        "inventory": demo.Inventory(),
        "payments": demo.PaymentGateway(),
        "shipping": demo.Shipping(),
        "mailer": demo.Mailer(),
    }
    return App(
        [demo.orders, support],
        backend=backend,
        resources=resources,
        workflows=[demo.ORDER_FULFILLMENT, REFUND],
        worker=WorkerConfig(concurrency=4, poll_interval=0.05),
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[App, str, httpx.Client]]:
    app = shop(f"sqlite:///{tmp_path / 'demo.db'}")
    tokens = {ADMIN: "admin", READER: "read"}
    with (
        live_server(app, tokens=tokens, workers=True) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as api,
    ):
        for order in demo_orders(ORDERS):
            assert api.post("/commands/place_order", json=order).status_code == 200
        made = api.post(
            "/queues/request_refund/jobs",
            json={"payload": {"order": "order-3"}, "correlation_id": "refund-1"},
        )
        assert made.status_code == 201, made.text
        yield app, url, api


def log_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("CONVEYOR_SCREENSHOTS") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_an_operator_follows_a_compensated_order_redrives_it_and_approves_a_refund(
    browser: Browser, served: tuple[App, str, httpx.Client], screenshots: Path
) -> None:
    app, url, api = served
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        log_in(page, url, ADMIN)
        cookie = next(c for c in context.cookies() if c["name"] == "conveyor_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # the orders, listed as they finish; the compensated ones by filter
        page.goto(f"{url}/ui/workflows")
        expect(page.locator("#workflow-list tr[data-id]")).to_have_count(ORDERS + 1, timeout=WAIT)
        page.get_by_label("state").select_option("compensated")
        declined = [f"order-{n}" for n in range(1, ORDERS + 1) if n % 5 == 0 and n % 7]
        expect(page.locator("#workflow-list tr[data-id]")).to_have_count(len(declined), timeout=WAIT)
        expect(page).to_have_url(re.compile(r"state=compensated"))

        # the overview, live: a new declined order shows in the dead count without a reload
        page.goto(f"{url}/ui/")
        dead = page.locator("#total-dead")
        expect(dead).to_have_text(str(len(declined)), timeout=WAIT)
        page.screenshot(path=str(screenshots / "overview.png"), full_page=True)
        late = {"order_id": "order-late", "items": [{"sku": "apple", "qty": 1}], "card": "0000"}
        assert api.post("/commands/place_order", json=late).status_code == 200
        expect(dead).to_have_text(str(len(declined) + 1), timeout=WAIT)

        # a compensated order: its steps, its graph, its dead letter
        page.goto(f"{url}/ui/workflows?state=compensated")
        page.get_by_role("link", name="order-5", exact=True).click()
        expect(page.locator("#instance-state")).to_have_text("compensated")
        expect(page.locator('#steps tr[data-queue="process_payment"]')).to_have_attribute(
            "data-state", "dead_lettered"
        )
        expect(page.locator('#graph g[data-node="queue:handle_payment_failure"]')).to_have_attribute(
            "data-lit", "yes"
        )
        expect(page.locator('#graph g[data-node="queue:create_shipment"]')).to_have_attribute(
            "data-lit", "no"
        )
        page.screenshot(path=str(screenshots / "workflow.png"), full_page=True)
        page.locator(".dead-letter-link").click()
        expect(page.locator("#traceback")).to_contain_text("card ending 0000 was declined")
        expect(page.locator("#body")).to_contain_text('"card": "0000"')
        page.screenshot(path=str(screenshots / "dead-letter.png"), full_page=True)

        # the customer's bank lets the card through now: redrive, confirmed with its count
        app.runtime.resources["payments"].declined_cards = frozenset()
        page.get_by_role("button", name="Redrive").click()
        expect(page.get_by_role("heading", name="Redrive 1 dead letter?")).to_be_visible()
        page.locator("#confirm").click()
        expect(page.locator("#done")).to_have_text("redrove 1")
        expect(page.locator("#dead-letter-list")).not_to_contain_text("order-5")
        page.goto(f"{url}/ui/workflows/order-5")
        expect(page.locator("#path")).to_contain_text("create_shipment", timeout=WAIT)

        # the refund's gate: approved here, and the page follows it to the end by itself
        page.goto(f"{url}/ui/workflows/refund-1")
        expect(page.locator(".approval")).to_be_visible(timeout=WAIT)
        page.get_by_label("note").fill("refund agreed on the phone")
        page.get_by_role("button", name="Approve").click()
        expect(page.locator(".notice")).to_have_text("refund approved")
        expect(page.locator("#instance-state")).to_have_text("completed", timeout=WAIT)
        expect(page.locator("#timeline")).to_contain_text("refund agreed on the phone")
        page.screenshot(path=str(screenshots / "approval.png"), full_page=True)
    finally:
        context.close()


def test_a_reader_sees_no_buttons_and_is_refused_an_action(
    browser: Browser, served: tuple[App, str, httpx.Client]
) -> None:
    _, url, _ = served
    context = browser.new_context()
    page = context.new_page()
    try:
        log_in(page, url, READER)
        page.goto(f"{url}/ui/queues")
        expect(page.locator("#queue-list")).to_contain_text("process_payment")
        expect(page.get_by_role("button", name="Pause")).to_have_count(0)
        page.goto(f"{url}/ui/workflows/refund-1")
        expect(page.locator(".approval")).to_contain_text("an operator decides this", timeout=WAIT)
        expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        refused = page.request.post(f"{url}/ui/queues/process_payment/pause", form={"csrf": "forged"})
        assert refused.status == 403
    finally:
        context.close()
