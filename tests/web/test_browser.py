"""The console in a real headless Chromium (Debian's, driven by Playwright) against real
worker processes, PostgreSQL and RabbitMQ (issue 15, "Done means").

``bin/_setup`` installs ``chromium`` with apt when it is missing.  Set
``BALLAST_CONSOLE_SCREENSHOTS=docs/console`` to write a screenshot of each page.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from infra import ledger, rabbit
from tests.harness import ROOT, send, uid, wait_quiet, wait_until
from tests.web.conftest import PASSWORD

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
STAKE = 150_000
SHOTS = os.getenv("BALLAST_CONSOLE_SCREENSHOTS")
T0 = datetime(2024, 6, 1, 9, 0, tzinfo=timezone.utc)
LOGI, PILOT, PAYER = 90_000_001, 90_000_002, 90_000_003  # game character ids

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: bin/test installs Debian's chromium with apt-get as root",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PAGE_SIZE = 20  # the console's rows per page in these tests


@pytest.fixture(scope="module")
def console(env):
    """``ballast web`` as its own process on the run's services; its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli.main", "web", "--port", str(port)], cwd=ROOT,
        env=env.environ(BALLAST_WEB_SECRET_KEY="browser-" + uid(), BALLAST_WEB_REFRESH_S="5",
                        BALLAST_WEB_PAGE_SIZE=str(PAGE_SIZE)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up():
        assert proc.poll() is None, proc.stderr.read().decode()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, 60, what="the console to listen")
    # localhost: a browser keeps a Secure cookie there over plain http (a secure context).
    yield f"http://localhost:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def admin(engine):
    from infra.web import operators

    name = uid("ops-")
    with engine.begin() as conn:
        operators.add(conn, name, "admin", PASSWORD)
    return name


@pytest.fixture
def page(browser, console, admin):
    """A fresh browser context logged in as the admin through the login form."""
    ctx = browser.new_context(base_url=console, viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    pg.goto("/")
    assert "/login" in pg.url  # not logged in: sent to the login page
    pg.fill("input[name=name]", admin)
    pg.fill("input[name=password]", PASSWORD)
    pg.click("button[type=submit]")
    sync_api.expect(pg.locator("header .who")).to_contain_text(admin)
    yield pg
    ctx.close()


def shot(pg, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=name != "contract")


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one_or_none()


def balance(engine, code: str) -> int:
    with engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def open_challenge(env, engine, max_risk: int, yes_users: int) -> tuple[str, list[str]]:
    before = balance(engine, "treasury:NGN")
    send(env, "fund_treasury", request_id=uid("fund"), currency="NGN", amount=10 * STAKE,
         reference="capital", performed_by="cfo")
    wait_until(lambda: balance(engine, "treasury:NGN") == before + 10 * STAKE, what="funding")
    cid = uid("c")
    send(env, "open_challenge", request_id=uid("r"), challenge_id=cid, title="Eagles on Sunday?",
         currency="NGN", stake=STAKE, admin_created=True)
    send(env, "configure_treasury", request_id=uid("r"), challenge_id=cid, max_risk=max_risk,
         notes="derby", admin_id="cfo")
    users = [uid() for _ in range(yes_users)]
    for u in users:
        send(env, "deposit", request_id=uid("d"), user_id=u, currency="NGN", amount=STAKE,
             reference="card")
    wait_until(lambda: all(balance(engine, f"user:{u}:NGN") == STAKE for u in users), what="deposits")
    for u in users:
        send(env, "join_challenge", request_id=uid("j"), challenge_id=cid, user_id=u, side="YES")
    wait_until(lambda: scalar(engine, "SELECT count(*) FROM challenge_participants "
                              "WHERE challenge_id = :c", c=cid) == yes_users, what="joins")
    return cid, users


def test_log_in_and_watch_a_fill_appear_after_confirming_it(page, env, engine, worker, admin):
    cid, users = open_challenge(env, engine, max_risk=3 * STAKE, yes_users=4)
    page.goto(f"/challenges/{cid}")
    sync_api.expect(page.locator("#yes-total")).to_contain_text("4 · 600,000")
    sync_api.expect(page.locator("#matches")).to_contain_text("no treasury matches yet")
    shot(page, "challenge")
    page.fill("#fill-form input[name=match_count]", "2")
    page.select_option("#fill-form select[name=side]", "YES")
    page.click("#fill")
    # The confirmation: the stake at risk and the budget after, from the domain's own plan.
    confirm = page.locator("form.confirm")
    sync_api.expect(confirm).to_contain_text("2 of 2 waiting YES user(s)")
    sync_api.expect(confirm).to_contain_text("Stake at risk: ₦3,000.00")
    sync_api.expect(confirm).to_contain_text("₦4,500.00 available now, ₦1,500.00 after")
    shot(page, "fill-confirmation")
    assert scalar(engine, "SELECT count(*) FROM treasury_fills WHERE challenge_id = :c", c=cid) == 0
    page.click("#confirm")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    # Typed into the form while the page refreshes itself: kept.
    page.fill("#configure-form input[name=notes]", "typing, do not lose me")
    rows = page.locator("#matches tbody tr")
    sync_api.expect(rows).to_have_count(2, timeout=30_000)
    sync_api.expect(page.locator("#matches")).to_contain_text("active")
    sync_api.expect(page.locator("#filled-count")).to_have_text("2", timeout=30_000)
    stamp = page.locator("[data-live-stamp]").inner_text()
    sync_api.expect(page.locator("[data-live-stamp]")).not_to_have_text(stamp, timeout=30_000)
    assert page.input_value("#configure-form input[name=notes]") == "typing, do not lose me"
    assert scalar(engine, "SELECT admin_id FROM treasury_fills WHERE challenge_id = :c", c=cid) == admin
    shot(page, "challenge-filled")


def test_replay_a_dead_letter(page, env, engine, worker):
    cid = uid("c")
    user = uid()
    send(env, "deposit", request_id=uid("d"), user_id=user, currency="NGN", amount=STAKE,
         reference="card")
    rid = uid("j")
    send(env, "join_challenge", request_id=rid, challenge_id=cid, user_id=user, side="NO")
    wait_until(lambda: [d for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
                        if d.summary()["request_id"] == rid], what="the dead letter")
    page.goto("/dlq")
    row = page.locator("table.dlq tr", has_text=rid)
    sync_api.expect(row).to_contain_text(f"challenge {cid} does not exist", timeout=30_000)
    sync_api.expect(row).to_contain_text("join_challenge")
    shot(page, "dead-letters")
    row.locator("td.reason a").click()
    sync_api.expect(page.locator("h1")).to_contain_text("Dead letter")
    shot(page, "dead-letter")
    page.go_back()
    # The challenge exists now: the replayed join succeeds.
    send(env, "open_challenge", request_id=uid("r"), challenge_id=cid, title="Replay me",
         currency="NGN", stake=STAKE, admin_created=False)
    wait_until(lambda: scalar(engine, "SELECT status FROM challenges WHERE id = :c", c=cid) == "open")
    page.locator("table.dlq tr", has_text=rid).locator("input[type=checkbox]").check()
    page.click("#replay-selected")
    sync_api.expect(page.locator("form.confirm")).to_contain_text("Replay 1 dead letter(s)")
    page.click("#confirm")
    sync_api.expect(page.locator(".notice.ok")).to_have_text("replayed 1 message(s)")
    wait_until(lambda: scalar(engine, "SELECT count(*) FROM challenge_participants "
                              "WHERE challenge_id = :c AND user_id = :u", c=cid, u=user) == 1,
               what="the replayed join")
    sync_api.expect(page.locator("table.dlq")).not_to_contain_text(rid)


def test_acknowledge_an_alert(page, env, engine, worker, admin):
    from infra.alerts import raise_alert
    from infra.uow import UnitOfWork

    key = uid("console-test:")
    with UnitOfWork() as uow:
        alert_id = raise_alert(uow, kind="console_test", severity="warning",
                               subject="a buffer runs low (test)", dedupe_key=key)
        uow.commit()
    page.goto("/")
    shot(page, "overview")
    page.goto("/alerts")
    row = page.locator(f"tr[data-alert='{alert_id}']")
    sync_api.expect(row.locator(".status")).to_have_text("open")
    shot(page, "alerts")
    row.locator("button", has_text="Acknowledge").click()
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    sync_api.expect(page.locator(f"tr[data-alert='{alert_id}'] .status")).to_have_text(
        f"acknowledged by {admin}", timeout=30_000)
    assert scalar(engine, "SELECT acknowledged_by FROM alerts WHERE id = :i", i=alert_id) == admin


def _setup_cycle(env, engine, cycle: str) -> None:
    # Character ids are the game's integers (strings of digits are accepted too, but not after
    # the identifier types stopped coercing).
    send(env, "register_character", request_id=uid("r"), character_id=LOGI, name="Logi",
         role="LOGISTICS")
    send(env, "register_character", request_id=uid("r"), character_id=PILOT, name="Pilot",
         role="USER")
    send(env, "plan_cycle", request_id=uid("r"), cycle_id=cycle)
    wait_quiet(env)
    for name, amount in {"boris": 8_000, "cleo": 9_000}.items():
        send(env, "create_participation", request_id=uid("r"), participation_id=f"p-{name}",
             cycle_id=cycle, user_id=f"u-{name}", character_name=name.capitalize(), amount=amount)
    wait_quiet(env)

    def entry(jid, amount, memo, char=LOGI):
        return {"journal_id": jid, "character_id": char, "date": T0.isoformat(),
                "ref_type": "player_donation", "amount": amount, "reason": memo,
                "first_party_id": PAYER, "second_party_id": char}

    send(env, "import_wallet_journal", request_id=uid("imp"), entries=[
        entry("j-typo", 8_000, "for boris, sorry no memo"),
        entry("j-user", 9_000, f"ARB {cycle} Cleo", char=PILOT)])
    wait_quiet(env)


def test_link_a_payment_by_hand_and_see_a_refusal_beside_the_field(page, env, engine, worker,
                                                                    empty_journal, admin):
    cycle = uid("cyc")
    _setup_cycle(env, engine, cycle)
    page.goto(f"/matching?cycle={cycle}")
    sync_api.expect(page.locator("#unmatched")).to_contain_text("j-typo")
    shot(page, "payment-matching")
    # Bad input: the CLI's one-line reason, beside the field, nothing sent.
    page.fill("#link-form input[name=participation_id]", "p-boris")
    page.fill("#link-form input[name=journal_id]", "j typo")
    page.click("#link")
    err = page.locator("[data-error-for=journal_id]")
    sync_api.expect(err).to_contain_text("invalid payload: journal_id: String should match pattern")
    assert page.input_value("#link-form input[name=participation_id]") == "p-boris"  # kept
    shot(page, "field-error")
    # A good link: sent as admin_id = the operator, applied by the worker.
    page.fill("#link-form input[name=journal_id]", "j-typo")
    page.click("#link")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT performed_by FROM journal_payment_links "
                              "WHERE journal_id = 'j-typo'") == admin, what="the link")
    page.reload()
    sync_api.expect(page.locator("tr[data-participation='p-boris'] .status")).to_have_text("OPTED_IN")
    # A refusal by the worker: its reason comes back beside the field.
    page.fill("#link-form input[name=participation_id]", "p-cleo")
    page.fill("#link-form input[name=journal_id]", "j-user")
    page.click("#link")
    sync_api.expect(page.locator(".notice .state")).to_have_text("rejected", timeout=30_000)
    sync_api.expect(page.locator("[data-error-for=journal_id]")).to_contain_text("USER character")


def test_a_forged_or_cross_site_form_post_is_refused(browser, page, console, env, engine,
                                                     clean_queues, admin):
    def cycles_sent():
        return scalar(engine, "SELECT count(*) FROM console_audit WHERE operator = :o "
                      "AND action = 'run_settlement_cycle'", o=admin)

    before = cycles_sent()
    # Same browser, logged in: a form posted from another site (no token, and SameSite=Strict
    # keeps the session cookie home), then a script on the console's own origin without one.
    evil = page.context.new_page()
    evil.set_content(f"<form id=f method=post action='{console}/treasury/cycle'>"
                     "<input name=trigger value=manual><input name=csrf_token value=guess></form>")
    with evil.expect_navigation():
        evil.evaluate("document.getElementById('f').submit()")
    assert "Refused" in evil.content()
    status = page.evaluate("""async () => (await fetch('/treasury/cycle',
        {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
         body: 'trigger=manual'})).status""")
    assert status == 400
    page.goto("/treasury")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    bad = page.evaluate("""async (t) => (await fetch('/treasury/cycle',
        {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
         body: 'csrf_token=' + encodeURIComponent(t.slice(0, -2) + 'xx')})).status""", token)
    assert bad == 400
    assert cycles_sent() == before
    assert scalar(engine, "SELECT count(*) FROM console_audit WHERE action = 'csrf'") >= 2


def test_trigger_a_cycle_and_pause_a_provider(page, env, engine, worker, admin):
    from infra.providers.simulated import make_config
    from infra.treasury import store

    from tests.infra.test_treasury_kit import reset, usd, usdc

    # A known treasury whatever earlier tests left: no job in flight, other providers paused,
    # usdc able to spare 50,000 for the low fiat and broker buffers.
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(10_000))
    name = uid("sim-")
    with engine.begin() as conn:
        store.add_provider(conn, store.ProviderRow(
            name, "simulated", 1, "active", ("USD->USDC", "USDC->USD"), 0, None, None,
            make_config(latency_polls=50), 0, 0))
    jobs_before = scalar(engine, "SELECT count(*) FROM conversion_jobs")
    page.goto("/treasury")
    page.click("#run-cycle")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT count(*) FROM conversion_jobs") > jobs_before,
               what="the cycle's jobs")
    page.reload()
    sync_api.expect(page.locator("[data-live=jobs] tbody tr").first).to_contain_text("USDC->USD")
    # Providers are paged (priority, name): the page that holds this one, whatever earlier
    # tests registered.
    before = scalar(engine, "SELECT count(*) FROM conversion_providers "
                            "WHERE (priority, name) < (1, :n)", n=name)
    ppage = f"/treasury?ppage={before // PAGE_SIZE + 1}"
    page.goto(ppage)
    row = page.locator("[data-live=providers] tr", has_text=name)
    row.locator("button", has_text="Pause").click()
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT status FROM conversion_providers WHERE name = :n",
                              n=name) == "paused", what="the provider paused")
    page.goto(ppage)
    sync_api.expect(page.locator("[data-live=providers] tr", has_text=name)).to_contain_text("paused")
    shot(page, "treasury-engine")
    page.locator("[data-live=jobs] tbody tr a").first.click()
    sync_api.expect(page.locator("main h1")).to_contain_text("Conversion job")
    sync_api.expect(page.locator("ol.timeline li").first).to_contain_text(f"by {admin} (manual)")
    shot(page, "conversion-job")


def test_every_page_shows_for_an_admin(page, env, engine, worker):
    user = uid()
    send(env, "deposit", request_id=uid("d"), user_id=user, currency="NGN", amount=5 * STAKE,
         reference="card")
    mid = uid("m")
    send(env, "open_market", request_id=uid("r"), market_id=mid, title="Who wins the derby?",
         kind="multi", options=[{"option_id": "home", "label": "Home"},
                                {"option_id": "away", "label": "Away"},
                                {"option_id": "draw", "label": "Draw"}],
         currency="NGN", creator_id="creator", creator_fee_bps=200)
    wait_until(lambda: balance(engine, f"user:{user}:NGN") == 5 * STAKE)
    wait_until(lambda: scalar(engine, "SELECT status FROM markets WHERE market_id = :m", m=mid))
    for option, amount in (("home", 2 * STAKE), ("away", STAKE)):
        send(env, "place_commitment", request_id=uid("r"), commitment_id=uid("k"), market_id=mid,
             user_id=user, amount=amount, option_id=option)
    wait_quiet(env)
    pages = {"challenges": "/challenges", "markets": "/markets", "market": f"/markets/{mid}",
             "wallet": f"/wallets?user={user}",
             "analytics": "/analytics", "contract": "/contract", "audit": "/audit"}
    for name, path in pages.items():
        page.goto(path)
        sync_api.expect(page.locator("main h1")).to_be_visible()
        assert "Refused" not in page.locator("main h1").inner_text()
        shot(page, name)
    page.goto(f"/markets/{mid}")
    sync_api.expect(page.locator("main")).to_contain_text("Pool 450,000")
    page.goto(f"/wallets?user={user}")
    # 5 stakes in, 3 committed: the balance and the audit trail (deposit + 2 commitments).
    sync_api.expect(page.locator("main")).to_contain_text("300,000 NGN")
    sync_api.expect(page.locator("main table").last.locator("tbody tr")).to_have_count(3)


def _settled_market(env, engine) -> tuple[str, str]:
    """A market resolved for ``home`` and settled by the workers; its id and the user's."""
    user = uid()
    send(env, "deposit", request_id=uid("d"), user_id=user, currency="NGN", amount=3 * STAKE,
         reference="card")
    mid = uid("m")
    send(env, "open_market", request_id=uid("r"), market_id=mid, title="Derby of the month",
         kind="multi", options=[{"option_id": "home", "label": "Home"},
                                {"option_id": "away", "label": "Away"}],
         currency="NGN", creator_id="creator", creator_fee_bps=200)
    wait_until(lambda: balance(engine, f"user:{user}:NGN") == 3 * STAKE)
    wait_until(lambda: scalar(engine, "SELECT status FROM markets WHERE market_id = :m", m=mid))
    for option, amount in (("home", 2 * STAKE), ("away", STAKE)):
        send(env, "place_commitment", request_id=uid("r"), commitment_id=uid("k"), market_id=mid,
             user_id=user, amount=amount, option_id=option)
    wait_until(lambda: scalar(engine, "SELECT count(*) FROM market_commitments "
                              "WHERE market_id = :m", m=mid) == 2, what="the commitments")
    send(env, "resolve_market", request_id=uid("r"), market_id=mid, winning_option_id="home",
         resolved_by="ops")
    wait_until(lambda: scalar(engine, "SELECT status FROM markets WHERE market_id = :m",
                              m=mid) == "settled", 60, what="the settlement")
    return mid, user


def test_dispute_a_market_then_confirm_its_resolution(page, env, engine, worker, admin):
    mid, user = _settled_market(env, engine)
    paid = balance(engine, f"user:{user}:NGN")
    page.goto(f"/markets/{mid}")
    sync_api.expect(page.locator("#lines tr")).to_have_count(2)
    sync_api.expect(page.locator("#commitments tbody tr")).to_have_count(2)
    # Bad input: the schema's one-line reason beside the field, nothing sent.
    page.fill("#dispute-form input[name=reason]", "x" * 201)
    page.click("#dispute")
    sync_api.expect(page.locator("[data-error-for=dispute-reason]")).to_contain_text(
        "reason: String should have at most 200 characters")
    assert scalar(engine, "SELECT count(*) FROM market_disputes WHERE market_id = :m", m=mid) == 0
    page.fill("#dispute-form input[name=reason]", "the away goal was offside")
    page.click("#dispute")
    confirm = page.locator("form.confirm")
    sync_api.expect(confirm).to_contain_text("Dispute market")
    sync_api.expect(confirm).to_contain_text("Nothing is paid or taken back")
    shot(page, "dispute-confirmation")
    assert scalar(engine, "SELECT status FROM markets WHERE market_id = :m", m=mid) == "settled"
    page.click("#confirm")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT status FROM markets WHERE market_id = :m",
                              m=mid) == "disputed", what="the dispute")
    assert scalar(engine, "SELECT disputed_by FROM market_disputes WHERE market_id = :m",
                  m=mid) == admin
    page.reload()
    sync_api.expect(page.locator("h1 small")).to_contain_text("disputed")
    sync_api.expect(page.locator("#dispute")).to_contain_text("the away goal was offside")
    shot(page, "market-disputed")
    # The resolution stands: confirmed from the console, no money moves.
    page.fill("#confirm-form input[name=note]", "checked the footage")
    page.click("#confirm-form button")
    sync_api.expect(page.locator("form.confirm")).to_contain_text("No money moves")
    page.click("#confirm")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT status FROM markets WHERE market_id = :m",
                              m=mid) == "settled", what="the confirmation")
    assert scalar(engine, "SELECT ended_by FROM market_disputes WHERE market_id = :m",
                  m=mid) == admin
    assert balance(engine, f"user:{user}:NGN") == paid


def test_open_then_close_a_cycle(page, env, engine, worker, empty_journal, admin):
    cycle = uid("cyc")
    _setup_cycle(env, engine, cycle)
    page.goto(f"/matching?cycle={cycle}")
    sync_api.expect(page.locator("#cycle-state .status")).to_have_text("planned")
    assert page.locator("#close-cycle").count() == 0  # only an open cycle is closed
    page.click("#open-cycle")
    page.click("#confirm")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT status FROM journal_cycles WHERE cycle_id = :c",
                              c=cycle) == "open", what="the cycle open")
    page.reload()
    page.click("#close-cycle")
    confirm = page.locator("form.confirm")
    sync_api.expect(confirm).to_contain_text(f"Close cycle {cycle}")
    sync_api.expect(confirm).to_contain_text("as closing capital")
    shot(page, "close-cycle-confirmation")
    assert scalar(engine, "SELECT status FROM journal_cycles WHERE cycle_id = :c", c=cycle) == "open"
    page.click("#confirm")
    sync_api.expect(page.locator(".notice .state")).to_have_text("applied", timeout=30_000)
    wait_until(lambda: scalar(engine, "SELECT status FROM journal_cycles WHERE cycle_id = :c",
                              c=cycle) == "closed", what="the cycle closed")
    assert scalar(engine, "SELECT closed_by FROM journal_cycles WHERE cycle_id = :c",
                  c=cycle) == admin
    page.reload()
    sync_api.expect(page.locator("#cycle-state .status")).to_have_text("closed")
    assert page.locator("#close-cycle").count() == 0
    shot(page, "cycle-closed")
