"""The operator console end to end in headless Chromium (issue 18's proof).

Each test drives the real browser against the live server (both planes on
loopback): sign in through the form, every page offline and without a
console error at two screen sizes, the keyboard, the device, campaign and
incident actions behind their confirmation, live updates without reload,
and a revoked token ending the open page's session. See conftest.py for
what every page records (errors, requests, screenshots).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, expect

from fleetward.ota import campaigns
from fleetward.ota.rollout import GatePolicy
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.store.db import utcnow
from fleetward.tenancy.roles import Principal
from fleetward.web import NAV
from tests.broker import connect, make_device, synced
from tests.helpers import csr_pem, new_key
from tests.ota.helpers import call, operator, review_passed, upload
from tests.ota.test_campaigns import add_devices
from tests.response.helpers import enroll as response_enroll
from tests.web.browser.conftest import NARROW, WIDE, Console

pytestmark = [pytest.mark.sqlite_run_only, pytest.mark.browser]

DOCS = "/api/v1/docs"
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code: the broker refused the publish
FLEET = [f"demo-{i:02d}" for i in range(4)]


def api(live: str, token: str, method: str, path: str, **kw: object) -> httpx.Response:
    """A REST API call with a Bearer token (what a script or the CLI does)."""
    return httpx.request(
        method,
        live + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kw,  # type: ignore[arg-type]
    )


def enroll(live: str, token: str, ids: list[str], *, product: str = "demo-sensor") -> None:
    """Enroll ``ids`` in the test environment through the API (one batch)."""
    items = [
        {"device_id": d, "csr": csr_pem(new_key(), d).decode(), "product": product} for d in ids
    ]
    r = api(
        live, token, "POST", "/api/v1/enrollments", json={"environment": "test", "items": items}
    )
    assert r.status_code == 200 and r.json()["issued"] == len(ids), r.text


def token_of(live: str, admin: str, role: str) -> tuple[str, str]:
    """A new API token of ``role`` in tenant default: (id, secret)."""
    r = api(live, admin, "POST", "/api/v1/tokens", json={"name": f"browser-{role}", "role": role})
    assert r.status_code == 201, r.text
    return str(r.json()["id"]), str(r.json()["token"])


def no_overflow(c: Console) -> None:
    """The page is no wider than the window (no horizontal scrolling)."""
    width, inner = c.page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width <= inner + 1, f"{c.page.url}: {width}px wide in a {inner}px window"


def test_sign_in_through_the_form_shows_the_fleet(
    console: Console, live: str, admin_token: str
) -> None:
    enroll(live, admin_token, FLEET)
    console.goto("/")
    expect(console.page).to_have_url(console.base + "/login")  # no session: the sign-in page
    console.shot("login")
    console.sign_in(admin_token)
    page = console.page
    expect(page.get_by_role("heading", level=1)).to_have_text("Fleet posture")
    expect(page.locator("header")).to_contain_text("default · admin")
    # The posture counts the devices just enrolled (all four are active, in test).
    expect(page.locator("#devices-total")).to_have_text(str(len(FLEET)))
    expect(page.locator("#devices-by-state")).to_contain_text("active")
    expect(page.locator("#devices-by-environment")).to_contain_text("test")
    console.shot("posture")
    page.get_by_role("link", name="Devices").click()
    expect(page).to_have_url(console.base + "/console/devices")
    for d in FLEET:
        expect(page.get_by_role("link", name=d)).to_be_visible()
    console.shot("devices")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(console.base + "/login")
    console.goto("/console/devices")  # the session is over: back to the sign-in page
    expect(page).to_have_url(console.base + "/login?next=%2Fconsole%2Fdevices")
    console.assert_clean()


def test_every_page_offline_without_errors_at_two_sizes(
    console: Console, live: str, admin_token: str
) -> None:
    enroll(live, admin_token, FLEET[:2])
    console.sign_in(admin_token)
    paths = [href for href, _ in NAV] + [DOCS]
    for size_name, size in (("wide", WIDE), ("narrow", NARROW)):
        console.page.set_viewport_size(size)  # type: ignore[arg-type]
        for path in paths:
            console.goto(path)
            if path == DOCS:  # Swagger UI rendered the operations from openapi.json
                expect(console.page.locator(".opblock").first).to_be_visible()
            else:
                expect(console.page.locator("main h1")).to_be_visible()
                assert console.page.locator("main").get_attribute("data-live") is not None
            no_overflow(console)
            console.shot(f"{size_name}-{path.strip('/') or 'posture'}")
    visited = {u.split("?")[0] for u in console.requests}
    for path in paths:
        assert console.base + path in visited, path
    console.assert_clean()


def test_the_keyboard_reaches_the_skip_link_and_the_navigation(
    console: Console, admin_token: str
) -> None:
    console.sign_in(admin_token)
    console.goto("/")
    page = console.page
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    expect(page.locator(":focus")).to_have_id("main")
    console.goto("/")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("fleetward")  # the brand, a link home
    labels = []
    for _ in NAV:
        page.keyboard.press("Tab")
        labels.append(page.evaluate("() => document.activeElement.textContent"))
    assert labels == [label for _, label in NAV]
    page.keyboard.press("Enter")  # the last one: Audit
    expect(page).to_have_url(console.base + NAV[-1][0])
    console.assert_clean()


def test_a_revoked_token_sends_the_open_page_to_sign_in(
    console: Console, live: str, admin_token: str
) -> None:
    token_id, token = token_of(live, admin_token, "auditor")
    console.sign_in(token)
    expect(console.page.locator("header")).to_contain_text("default · auditor")
    expect(console.page.locator("#live")).to_have_text("live")
    gone = api(live, admin_token, "DELETE", f"/api/v1/tokens/{token_id}")
    assert gone.status_code in (200, 204), gone.text
    started = time.monotonic()
    # The event stream polls every 2 s and then sends `ended`; the script goes to /login.
    console.page.wait_for_url(f"{console.base}/login**", timeout=8_000)
    assert time.monotonic() - started < 8
    expect(console.page.get_by_label("API token")).to_be_visible()
    console.shot("signed-out")
    console.assert_clean()


def keep_marker(c: Console) -> None:
    """Mark the window: the mark survives only as long as the page is not reloaded."""
    c.page.evaluate("() => { window.__fleetwardNoReload = true; }")


def not_reloaded(c: Console) -> None:
    assert c.page.evaluate("() => window.__fleetwardNoReload === true"), "the page was reloaded"


def confirm_dialog(c: Console, *, effect: str) -> Locator:
    """The open confirmation dialog, which states ``effect`` (a substring)."""
    dialog = c.page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#confirm-effect")).to_contain_text(effect)
    return dialog


def test_a_confirmation_is_confirmed_and_cancelled_with_the_keyboard(
    console: Console, live: str, admin_token: str
) -> None:
    enroll(live, admin_token, ["kbd-1"])
    console.sign_in(admin_token, next_path="/console/devices/kbd-1")
    page = console.page
    keep_marker(console)
    state = page.locator("#device-state")
    expect(state).to_have_text("active")
    quarantine = page.get_by_role("button", name="Quarantine", exact=True)
    quarantine.focus()
    page.keyboard.press("Enter")
    confirm_dialog(console, effect="the broker limits it")
    expect(page.locator(":focus")).to_have_id("confirm-ok")  # the stated effect, then Confirm
    page.keyboard.press("Escape")  # cancel, 1: Escape closes the dialog
    expect(page.locator("dialog#confirm")).to_be_hidden()
    expect(quarantine.locator("xpath=..").locator("output")).to_have_text("Cancelled.")
    quarantine.focus()
    page.keyboard.press("Enter")
    confirm_dialog(console, effect="the broker limits it")
    page.keyboard.press("Shift+Tab")  # cancel, 2: the Cancel button, pressed with Enter
    expect(page.locator(":focus")).to_have_text("Cancel")
    page.keyboard.press("Enter")
    expect(page.locator("dialog#confirm")).to_be_hidden()
    expect(state).to_have_text("active")
    assert api(live, admin_token, "GET", "/api/v1/devices/kbd-1").json()["state"] == "active"
    quarantine.focus()
    page.keyboard.press("Enter")
    confirm_dialog(console, effect="the broker limits it")
    page.keyboard.press("Enter")  # confirm: focus is on Confirm
    expect(state).to_have_text("quarantined")  # shown without a reload
    not_reloaded(console)
    assert api(live, admin_token, "GET", "/api/v1/devices/kbd-1").json()["state"] == "quarantined"
    console.shot("device-quarantined")
    console.assert_clean()


def test_the_weakest_role_is_offered_no_action_and_a_forged_one_is_refused(
    console: Console, live: str, admin_token: str
) -> None:
    enroll(live, admin_token, ["aud-1"])
    _, auditor = token_of(live, admin_token, "auditor")
    console.sign_in(auditor, next_path="/console/devices/aud-1")
    page = console.page
    expect(page.locator("#device-state")).to_have_text("active")
    expect(page.locator("main form.action")).to_have_count(0)
    console.shot("device-auditor")
    # The same call the Quarantine form makes, sent by a script in the page with the
    # session's cookie and CSRF token: the API refuses the role.
    status, detail = page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch("/api/v1/devices/aud-1/state", {
                method: "POST", credentials: "same-origin",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                body: JSON.stringify({state: "quarantined"})});
            return [r.status, (await r.json()).detail];
        }"""
    )
    assert status == 403
    assert "console" not in detail, detail  # refused for the role, not as a cross-site call
    assert api(live, admin_token, "GET", "/api/v1/devices/aud-1").json()["state"] == "active"
    refused = [e for e in console.errors if "status of 403" in e]
    assert len(refused) == 1, console.errors  # the browser logs the refused call: expected
    console.errors.remove(refused[0])
    console.assert_clean()


@pytest.mark.broker
def test_quarantine_from_the_device_page_reaches_the_broker(
    console: Console,
    live: str,
    admin_token: str,
    ctx: AppContext,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    creds = make_device(ctx, tmp_path, "cell-7")  # a real certificate, connected over mTLS
    synced(broker)
    mqtt = connect(broker.port, broker.files.broker_ca, creds.cert, creds.key)
    try:
        assert mqtt.publish("fw/default/cell-7/state/x") == 0  # a normal topic, allowed
        console.sign_in(admin_token, next_path="/console/devices/cell-7")
        page = console.page
        keep_marker(console)
        expect(page.locator("#device-state")).to_have_text("active")
        console.shot("device-active")
        page.get_by_role("button", name="Quarantine", exact=True).click()
        dialog = confirm_dialog(console, effect="the broker limits it")
        console.shot("quarantine-confirm")
        dialog.get_by_role("button", name="Confirm").click()
        expect(page.locator("#device-state")).to_have_text("quarantined")
        not_reloaded(console)
        console.shot("device-quarantined")
        # At the broker: still connected, but the normal topic is now refused.
        synced(broker)
        assert mqtt.publish("fw/default/cell-7/state/x") == NOT_AUTHORIZED
        assert mqtt.publish("fw/default/cell-7/telemetry/x") == 0  # the quarantine role's own
        # A change made elsewhere reaches the open page by the event stream, without reload.
        released = api(
            live, admin_token, "POST", "/api/v1/devices/cell-7/state", json={"state": "active"}
        )
        assert released.status_code == 200, released.text
        expect(page.locator("#device-state")).to_have_text("active", timeout=8_000)
        not_reloaded(console)
        synced(broker)
        assert mqtt.publish("fw/default/cell-7/state/x") == 0
    finally:
        mqtt.close()
    console.assert_clean()


def halted_campaign(live: str, ctx: AppContext, admin_token: str) -> int:
    """A campaign halted by its gate after the first wave (as in tests/ota/test_campaigns.py)."""
    add_devices(ctx, 10)
    api(live, admin_token, "POST", "/api/v1/ota/products/thermo", json={"threshold": 1})
    rm = operator(ctx, "release-manager", "rm")
    up = upload(live, rm, product="thermo", version="1.1.0", image=b"good")
    assert up.status_code == 201, up.text
    rid = int(up.json()["id"])
    approved = call(live, rm, "POST", f"/api/v1/releases/{rid}/approvals")
    assert approved.json()["state"] == "deployable", approved.text
    principal = Principal(1, "default", "release-manager", "rm")
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(
            s, principal, release_id=rid, waves=[50, 100], gate=GatePolicy(time_limit_seconds=1)
        ).id
        campaigns.step(s, cid)
    review_passed(ctx, cid)
    with ctx.db.session() as s:
        campaigns.step(s, cid, now=utcnow() + dt.timedelta(seconds=5))
        assert campaigns.get_campaign(s, principal, cid).state == "halted"
    return int(cid)


def test_halt_and_resume_a_campaign_from_its_page(
    console: Console, live: str, admin_token: str, ctx: AppContext
) -> None:
    cid = halted_campaign(live, ctx, admin_token)
    console.sign_in(admin_token, next_path=f"/console/campaigns/{cid}")
    page = console.page
    keep_marker(console)
    expect(page.locator("#campaign-state")).to_have_text("halted")
    expect(page.locator("#campaign-reason")).to_contain_text("within 1 s")
    console.shot("campaign-halted")
    page.get_by_role("button", name="Resume", exact=True).click()
    dialog = confirm_dialog(console, effect=f"Resume campaign {cid}")
    console.shot("campaign-resume-confirm")
    dialog.get_by_role("button", name="Confirm").click()
    expect(page.locator("#campaign-state")).to_have_text("running")
    expect(page.get_by_text("Halted:")).to_have_count(0)
    not_reloaded(console)
    console.shot("campaign-running")
    console.assert_clean()


REVOKE = (
    "name: revoke-batch\nparams: {batch: null}\ncohort: {batch: '{batch}'}\n"
    "steps: [{action: revoke, reason: keyCompromise}]\n"
)


def test_a_playbook_dry_run_shows_the_blast_radius(
    console: Console, live: str, admin_token: str, ctx: AppContext
) -> None:
    _, sec = token_of(live, admin_token, "security")
    response_enroll(ctx, [f"bat-{i}" for i in range(3)], batch=21)
    response_enroll(ctx, ["bystander"], batch=22)
    put = api(live, sec, "PUT", "/api/v1/playbooks", json={"source": REVOKE})
    assert put.status_code == 201, put.text
    inc = api(live, sec, "POST", "/api/v1/incidents", json={"title": "batch 21 keys leaked"})
    assert inc.status_code == 201, inc.text
    iid = inc.json()["id"]
    console.sign_in(sec, next_path=f"/console/incidents/{iid}")
    page = console.page
    form = page.get_by_role("form", name="Dry run")
    form.get_by_label("Playbook").select_option("revoke-batch")
    form.get_by_label("Environment").select_option("test")
    form.get_by_label("Parameters (JSON object)").fill('{"batch": 21}')
    form.get_by_role("button", name="Dry run").click()
    radius = page.locator("#dry-run")
    expect(radius).to_be_visible()
    expect(radius).to_contain_text("revoke-batch")
    expect(radius.locator("dd").nth(1)).to_contain_text("3 of 4 in test")
    expect(radius).to_contain_text("bat-0")
    expect(radius).not_to_contain_text("bystander")
    console.shot("dry-run")
    states = {d: api(live, sec, "GET", f"/api/v1/devices/{d}").json()["state"] for d in ("bat-0",)}
    assert states == {"bat-0": "active"}  # a dry run changes nothing
    console.assert_clean()
