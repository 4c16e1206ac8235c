"""The engine's operator levers, cost-aware choice, own polling and reconciliation, on real
PostgreSQL (steps in-process; tests/e2e/test_treasury_engine.py runs them through workers)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from domain import conversions as conv
from domain.errors import InvalidCommand, Refused
from infra.cli.main import cli
from services.conditions import evaluate
from infra.treasury import reconcile
from services import treasury_conditions as conditions
from tests.steps import polling, submission, levers
from services.treasury_conditions import reconciliation
from infra.uow import UnitOfWork
from tests.harness import CLI_OPERATOR, uid
from tests.infra.test_treasury_kit import (
    add_provider, attempts, balance, balances, cycle_now, drive, job, ledger_check, open_alert,
    outbox_events, reset, sim, transit_total, usd, usdc,
)

pytestmark = pytest.mark.usefixtures("clean_queues")

FIAT, USDC_BUF = "buffer:system_buffer_fiat", "buffer:system_buffer_usdc"


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 and "--json" in args else result


def freeze(engine, by="ops", reason="incident 42"):
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        state = levers.freeze(uow, by=by, reason=reason)
        uow.commit()
    return state


def thaw(engine, by="ops"):
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        state = levers.thaw(uow, by=by)
        uow.commit()
    return state


def outbox_messages(engine, actor: str, job_id: int) -> list[dict]:
    with engine.connect() as conn:
        return [r.body for r in conn.execute(text(
            "SELECT body FROM outbox WHERE kind = 'message' AND body->>'actor_name' = :a "
            "AND (body->'kwargs'->>'job_id')::bigint = :j ORDER BY id"), {"a": actor, "j": job_id})]


def mine(found, *subjects):
    return [d for d in found if d.subject in subjects]


@pytest.fixture
def thawed(engine):
    """Every test leaves conversions thawed, whatever it asserted."""
    yield
    with engine.connect() as conn:
        frozen = levers.frozen(conn)
    if frozen:
        thaw(engine, by="test-cleanup")


# --- freeze and thaw ---------------------------------------------------------------------

def test_a_freeze_stops_new_jobs_and_submissions_but_held_jobs_are_still_polled(engine, thawed):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, config=sim(latency_polls=2))
    [held] = cycle_now(engine)
    submission.submit(held, engine)
    assert job(engine, held).status == conv.SUBMITTED
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        pending = levers.convert_manually(uow, source_type="broker_operational",
                                        destination_type="system_buffer_usdc", amount=usd(1_000),
                                        performed_by="ops")
        uow.commit()

    who = uid("alice")  # the run's database holds other tests' freezes too
    state = freeze(engine, by=who, reason="provider incident")
    assert (state["frozen"], state["by"]) == (True, who)
    [event] = [e for e in _events(engine, "conversion.frozen") if e["data"]["by"] == who]
    assert event["data"]["reason"] == "provider incident"
    with pytest.raises(Refused, match="frozen already"):
        freeze(engine)

    # no new job: neither a cycle (the usdc buffer is still low while the job is held) ...
    reset_low = balances(engine, USDC_BUF)[USDC_BUF]
    assert reset_low < usdc(10_000)
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        with pytest.raises(Refused, match="frozen by alice"):  # ... nor an operator's conversion
            levers.convert_manually(uow, source_type="broker_operational",
                                  destination_type="system_buffer_usdc", amount=usd(1_000),
                                  performed_by="ops")
    # no submission: the pending job stays pending, nothing moved to transit
    transit_before = transit_total(engine)
    assert submission.submit(pending, engine) == conv.PENDING
    assert attempts(engine, pending) == [] and transit_total(engine) == transit_before
    # polling continues: the held job completes
    polling.poll(held, engine)
    polling.poll(held, engine)
    assert job(engine, held).status == conv.COMPLETED

    thawed_state = thaw(engine, by="bob")
    assert thawed_state["pending_resubmitted"] >= 1
    assert outbox_messages(engine, "submit_conversion", pending)[-1]["kwargs"]["request_id"].startswith(
        f"conversion:{pending}:thaw:")
    assert [e["data"]["frozen_by"] for e in _events(engine, "conversion.thawed")][-1] == who
    assert drive(engine, pending).status == conv.COMPLETED
    with engine.connect() as conn:
        log = levers.audit_log(conn)
    assert [(a["action"], a["by"]) for a in log[:2]] == [("thaw", "bob"), ("freeze", who)]
    with pytest.raises(Refused, match="not frozen"):
        thaw(engine)
    assert ledger_check(engine)["ok"]


def test_a_frozen_cycle_creates_no_job(engine, thawed):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    freeze(engine)
    assert cycle_now(engine) == [] and cycle_now(engine, "scheduled") == []
    thaw(engine)
    assert len(cycle_now(engine)) == 1
    assert ledger_check(engine)["ok"]


def test_freeze_and_thaw_from_the_cli_need_a_name(engine, thawed):
    reset(engine)
    run("conversions", "freeze", "--reason", "x", code=2)  # --by is required
    run("conversions", "freeze", "--by", " ", "--reason", "x", code=2)
    doc = run("conversions", "freeze", "--by", CLI_OPERATOR, "--reason", "audit", "--json")
    assert (doc["frozen"], doc["by"], doc["reason"]) == (True, CLI_OPERATOR, "audit")
    run("conversions", "freeze", "--by", CLI_OPERATOR, "--reason", "again", code=1)
    run("conversions", "thaw", code=2)
    assert run("conversions", "thaw", "--by", CLI_OPERATOR, "--json")["by"] == CLI_OPERATOR


def _events(engine, name):
    with engine.connect() as conn:
        return [r.body for r in conn.execute(text(
            "SELECT body FROM outbox WHERE kind = 'event' AND event_name = :n ORDER BY id"),
            {"n": name})]


# --- complete or fail by hand ----------------------------------------------------------------

def test_a_stuck_job_completed_by_hand_posts_exactly_what_the_provider_would(engine):
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(250_000))
    stuck = add_provider(engine, config=sim(fail_mode="stick", rate_ppm=999_000, fee_bps=25))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    polling.poll(job_id, engine)
    assert job(engine, job_id).status == conv.PROCESSING
    with pytest.raises(InvalidCommand, match="evidence"):
        levers.complete_by_hand(job_id, by="ops", reason="provider confirmed", evidence="",
                                   destination_amount=1, fee_amount=0, engine=engine)
    with pytest.raises(InvalidCommand, match="performed_by"):  # the contract's rule
        levers.complete_by_hand(job_id, by="", reason="r", evidence="e",
                                   destination_amount=1, fee_amount=0, engine=engine)
    fees_before = balance(engine, "fees:conversion:USD")

    shown = run("conversions", "complete", str(job_id), "--by", CLI_OPERATOR, "--reason",
                "provider confirmed by phone", "--evidence", "CASE-7781",
                "--destination-amount", "4982512", "--fee", "12488", "--json")
    assert (shown["status"], shown["destination_amount"], shown["fee_amount"]) == (
        conv.COMPLETED, 4_982_512, 12_488)
    [audit] = shown["overrides"]
    assert (audit["action"], audit["by"], audit["evidence"]) == ("complete", CLI_OPERATOR, "CASE-7781")
    assert audit["at"]
    # the same postings as test_completion_moves_transit_through_provider_at_its_rate...
    assert balance(engine, FIAT) == usd(10_000) + 4_982_512
    assert balance(engine, "fees:conversion:USD") - fees_before == 12_488
    assert balance(engine, f"provider:{stuck}:USDC") == usdc(50_000)
    assert balance(engine, f"provider:{stuck}:USD") == -4_995_000
    assert balance(engine, "transit:USDC") == 0
    with engine.connect() as conn:
        meta = conn.execute(text("SELECT metadata FROM ledger_transactions WHERE idempotency_key = :k"),
                            {"k": f"conversion:{job_id}:complete"}).scalar_one()
    assert meta["provider_ref"] == "CASE-7781"
    assert outbox_events(engine, "conversion.completed", job_id)
    assert any(f"by hand by {CLI_OPERATOR}" in (t["note"] or "") for t in shown["transitions"])
    run("conversions", "complete", str(job_id), "--by", CLI_OPERATOR, "--reason", "again", "--evidence",
        "X", "--destination-amount", "1", "--fee", "0", code=1)  # completed already
    assert ledger_check(engine)["ok"]


def test_a_stuck_job_failed_by_hand_returns_transit_like_a_real_failure(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, config=sim(fail_mode="stick"))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    assert balance(engine, FIAT) == usd(90_000)
    run("conversions", "fail", str(job_id), "--by", CLI_OPERATOR, "--reason", "r", code=2)  # no evidence
    shown = run("conversions", "fail", str(job_id), "--by", CLI_OPERATOR, "--reason",
                "provider says it was never executed", "--evidence", "TICKET-9", "--json")
    assert shown["status"] == conv.FAILED
    assert f"by hand by {CLI_OPERATOR}" in shown["failure_reason"] and "TICKET-9" in shown["failure_reason"]
    assert [a["status"] for a in shown["attempt_log"]] == ["failed"]
    assert balance(engine, FIAT) == usd(150_000) and transit_total(engine) == 0
    assert outbox_events(engine, "conversion.failed", job_id)
    assert open_alert(engine, f"conversion:failed:{job_id}") is not None
    assert shown["overrides"][0]["by"] == CLI_OPERATOR
    assert ledger_check(engine)["ok"]


# --- cost-aware selection ---------------------------------------------------------------------

def test_the_provider_quoting_the_most_for_the_destination_wins_over_priority(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    dear = add_provider(engine, priority=1, config=sim(rate_ppm=998_000, fee_bps=10))
    cheap = add_provider(engine, priority=2, config=sim(rate_ppm=999_500, fee_bps=5))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    [a] = attempts(engine, job_id)
    assert a.provider == cheap
    by_name = {q["provider"]: q for q in a.quotes}
    assert set(by_name) == {dear, cheap}
    # 60,000 USD at 0.9995 = 59,970 USDC, less 5 bps; at 0.998 = 59,880 less 10 bps
    assert by_name[cheap]["destination_amount"] == conv.quote(usd(60_000), "USD->USDC", 999_500, 5).net
    assert by_name[dear]["destination_amount"] == conv.quote(usd(60_000), "USD->USDC", 998_000, 10).net
    assert cheap in a.decision and "the most" in a.decision
    assert drive(engine, job_id).destination_amount == by_name[cheap]["destination_amount"]
    assert ledger_check(engine)["ok"]


def test_equal_quotes_go_to_the_lower_priority_number(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    second = add_provider(engine, priority=2, config=sim(rate_ppm=999_000))
    first = add_provider(engine, priority=1, config=sim(rate_ppm=999_000))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    [a] = attempts(engine, job_id)
    assert a.provider == first and "tied" in a.decision
    assert {q["provider"] for q in a.quotes} == {first, second}
    assert ledger_check(engine)["ok"]


# --- per-job polling --------------------------------------------------------------------------

def test_a_submitted_job_schedules_its_own_polls_with_backoff(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, config=sim(latency_polls=3))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    [first] = outbox_messages(engine, "poll_conversion", job_id)
    assert first["queue_name"] == "ballast.step.polling.DQ"
    assert first["kwargs"] == {"request_id": f"conversion:{job_id}:poll:0", "job_id": job_id,
                               "poll_no": 0}
    assert first["options"]["eta"] - first["message_timestamp"] >= 2_000
    polling.poll(job_id, engine, poll_no=0)
    polling.poll(job_id, engine, poll_no=1)
    chain = outbox_messages(engine, "poll_conversion", job_id)
    assert [m["kwargs"]["poll_no"] for m in chain] == [0, 1, 2]
    delays = [m["options"]["eta"] - m["message_timestamp"] for m in chain]
    assert delays[1] >= 4_000 and delays[2] >= 8_000
    polling.poll(job_id, engine, poll_no=2)
    assert job(engine, job_id).status == conv.COMPLETED
    assert len(outbox_messages(engine, "poll_conversion", job_id)) == 3  # finished: no next
    assert ledger_check(engine)["ok"]


# --- reconciliation ---------------------------------------------------------------------------

def test_reconciliation_agrees_after_conversions_and_names_each_difference(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, config=sim(rate_ppm=999_500, fee_bps=10))
    [job_id] = cycle_now(engine)
    assert drive(engine, job_id).status == conv.COMPLETED
    reports = reconcile.provider_reports(engine)
    assert reports[name] == {"USD": usd(60_000), "USDC": -conv.quote(usd(60_000), "USD->USDC",
                                                                     999_500, 0).gross}
    with engine.connect() as conn:
        found = reconcile.differences(conn, reports)
    assert mine(found, f"provider:{name}:USD", f"provider:{name}:USDC", f"job {job_id}") == []
    # transit and orphans are global; other tests seed jobs without ledger on purpose
    assert [d for d in found if d.check in ("transit", "orphan_transaction")
            or (d.check == "job_ledger" and d.subject == f"job {job_id}")] == []

    # every kind of difference, made inside a transaction that is rolled back
    with engine.connect() as conn, conn.begin() as tx:
        from domain.ledger import Posting
        from infra import ledger
        conn.execute(text("UPDATE simulated_provider_orders SET destination_amount = "
                          "destination_amount + 5 WHERE provider = :p"), {"p": name})
        ledger.post(conn, [Posting(FIAT, "USD", -usd(1)), Posting("transit:USD", "USD", usd(1))],
                    kind="conversion_transit", metadata={"job_id": 10**9})
        conn.execute(text("UPDATE conversion_jobs SET destination_amount = destination_amount + 1 "
                          "WHERE id = :j"), {"j": job_id})
        reconcile.record_custody(conn, "system_buffer_usdc", balance(engine, USDC_BUF) + 7, "chain")
        books = {name: {"USD": usd(60_000), "USDC": reports[name]["USDC"] - 5}}
        # only this test's provider and job: other tests seed jobs without ledger on purpose
        found = {d.check: d for d in reconcile.differences(conn, books)
                 if (d.check != "provider_books" or name in d.subject)
                 and (d.check != "job_ledger" or d.subject == f"job {job_id}")}
        tx.rollback()
    assert found["provider_books"].subject == f"provider:{name}:USDC"
    assert found["provider_books"].difference == 5
    assert found["transit"].subject == "transit:USD" and found["transit"].difference == usd(1)
    assert found["orphan_transaction"].detail.endswith("which does not exist")
    assert found["job_ledger"].subject == f"job {job_id}" and found["job_ledger"].difference == -1
    assert found["custody"].difference == -7  # the ledger holds 7 less than the chain says
    assert ledger_check(engine)["ok"]


def test_a_custody_difference_is_an_alert_with_amounts_until_it_is_resolved(engine):
    reset(engine, usdc_buffer=usdc(20_000), fiat=usd(150_000), broker=usd(250_000))
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        reconcile.record_custody(uow.conn, "system_buffer_usdc", usdc(19_999), "chain-reader")
        uow.commit()
    outcome = evaluate({"treasury.reconciliation": reconciliation}, request_id=uid("sweep"),
                       engine=engine)
    assert outcome == {"treasury.reconciliation": "ok"}
    key = f"reconciliation:custody:{USDC_BUF}"
    alert = open_alert(engine, key)
    assert alert is not None and alert.severity == "critical"
    assert (alert.data["expected"], alert.data["actual"], alert.data["difference"]) == (
        usdc(19_999), usdc(20_000), usdc(1))
    [event] = [e for e in _events(engine, "conversion.reconciliation_failed")
               if e["data"]["subject"] == USDC_BUF][-1:]
    assert event["data"]["difference"] == usdc(1)
    result = run("treasury", "reconcile", "--json", code=1)
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert any(d["check"] == "custody" and d["difference"] == usdc(1) for d in doc["differences"])

    run("treasury", "custody", "report", "system_buffer_usdc", "--balance", str(usdc(20_000)),
        "--by", CLI_OPERATOR, "--json")
    evaluate({"treasury.reconciliation": reconciliation}, request_id=uid("sweep"), engine=engine)
    assert open_alert(engine, key) is None
    from services.conditions import CONDITIONS
    assert CONDITIONS["treasury.reconciliation"] is conditions.reconciliation  # in the sweep


# --- callbacks (the handler; tests/e2e drives the real server) ---------------------------------

def test_a_callback_secret_is_set_once_and_never_shown(engine):
    reset(engine)
    name = add_provider(engine)
    doc = run("callbacks", "secret", name, "--json")
    assert doc["provider"] == name and len(doc["secret"]) == 64
    shown = run("providers", "set", name, "--by", CLI_OPERATOR, "--yes", "--json")
    assert shown["callbacks"] is True and doc["secret"] not in json.dumps(shown)
    run("callbacks", "secret", name, "--secret", "short", code=2)
    run("callbacks", "secret", "nobody", "--secret", "x" * 20, code=1)


def test_the_callback_handler_refuses_what_it_cannot_believe(engine):
    from infra.providers import callbacks as signing
    from infra.treasury import callbacks

    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, config=sim(latency_polls=1000))
    secret = run("callbacks", "secret", name, "--json")["secret"]
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    [a] = attempts(engine, job_id)

    def call(doc, **over):
        body, headers = signing.signed_request(secret, doc)
        return callbacks.handle(engine, name, {**headers, **over}, body,
                                polling.apply_callback(engine))

    assert call({"idempotency_key": "ballast-nope", "status": "completed",
                 "destination_amount": 1})[0] == 404
    assert call({"idempotency_key": a.idempotency_key, "status": "completed"})[0] == 400  # no amounts
    assert call({"idempotency_key": a.idempotency_key, "status": "teleported"})[0] == 400
    assert call({"idempotency_key": a.idempotency_key, "status": "processing"},
                **{signing.TIMESTAMP_HEADER: "1"})[0] == 401  # signature no longer matches
    assert job(engine, job_id).status == conv.SUBMITTED
    code, answer = call({"idempotency_key": a.idempotency_key, "status": "failed",
                         "reason": "compliance hold"})
    assert (code, answer["status"]) == (200, conv.FAILED)
    assert "compliance hold" in job(engine, job_id).failure_reason
    assert transit_total(engine) == 0 and ledger_check(engine)["ok"]


def test_an_http_provider_without_a_quote_endpoint_is_priced_at_its_configured_rate(engine):
    from infra.providers.http import make_config as http_config
    from tests.infra.test_treasury_kit import FakeHttpProvider

    fake = FakeHttpProvider(rate_ppm=999_900)
    try:
        reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
        add_provider(engine, priority=1, config=sim(rate_ppm=999_000))
        name = uid("http")
        run("providers", "add", name, "--by", CLI_OPERATOR, "--type", "http", "--priority", "2", "--url", fake.url,
            "--rate", "0.9999", "--json")
        [job_id] = cycle_now(engine)
        submission.submit(job_id, engine)
        [a] = attempts(engine, job_id)
    finally:
        fake.close()
    assert a.provider == name
    quoted = {q["provider"]: q for q in a.quotes}[name]
    assert (quoted["source"], quoted["rate_ppm"]) == ("configured", 999_900)
    assert quoted["destination_amount"] == conv.quote(usd(60_000), "USD->USDC", 999_900, 0).net
    assert ledger_check(engine)["ok"]


def test_every_everyday_lever_records_who_pulled_it(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine)
    assert run("buffers", "rebalance", "--by", CLI_OPERATOR, "--json") == {"jobs_created": 1}
    [active] = run("conversions", "--active", "--json")
    assert job(engine, active["job_id"]).requested_by == CLI_OPERATOR
    run("providers", "pause", name, "--by", CLI_OPERATOR, "--json")
    run("providers", "resume", name, "--json", code=2)  # no --by: refused, never a literal
    run("providers", "resume", name, "--by", CLI_OPERATOR, "--json")
    run("buffers", "pause", "--by", CLI_OPERATOR, "--json")
    run("buffers", "resume", "--by", CLI_OPERATOR, "--json")
    run("buffers", "set", "system_buffer_fiat", "--batch", str(usd(50_000)), "--by", CLI_OPERATOR,
        "--yes", "--json")
    with engine.connect() as conn:
        log = levers.audit_log(conn, limit=6)
    assert [(a["action"], a["by"]) for a in reversed(log)] == [
        ("rebalance", CLI_OPERATOR), ("pause_provider", CLI_OPERATOR),
        ("resume_provider", CLI_OPERATOR), ("pause_rebalancing", CLI_OPERATOR),
        ("resume_rebalancing", CLI_OPERATOR), ("set_thresholds", CLI_OPERATOR)]
    assert log[-1]["data"] == {"jobs_created": [active["job_id"]]}
    assert log[-2]["data"] == {"provider": name}
