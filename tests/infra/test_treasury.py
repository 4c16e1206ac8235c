"""The treasury engine on real PostgreSQL (steps called in-process; see tests/e2e for workers)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from domain import conversions as conv
from domain.errors import InsufficientFunds, Refused
from infra.treasury import store
from tests.steps import cycle, polling, submission, levers
from infra.uow import UnitOfWork
from tests.harness import uid
from tests.infra.test_treasury_kit import (
    add_provider, attempts, balance, balances, cycle_now, drive, job, ledger_check, open_alert,
    outbox_events, reset, seed_outcomes, set_mode, sim, transit_total, usd, usdc,
)

pytestmark = pytest.mark.usefixtures("clean_queues")

FIAT, USDC_BUF, BROKER = ("buffer:system_buffer_fiat", "buffer:system_buffer_usdc",
                          "buffer:broker_operational")


def test_buffer_flow_posts_against_world_and_a_buffer_never_goes_negative(engine):
    reset(engine, fiat=usd(1_000))
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        cycle.record_flow(uow, "system_buffer_fiat", usd(500), "funding")
        uow.commit()
    assert balance(engine, FIAT) == usd(1_500)
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        with pytest.raises(InsufficientFunds):
            cycle.record_flow(uow, "system_buffer_fiat", -usd(1_501), "withdrawal")
    assert balance(engine, FIAT) == usd(1_500)
    assert ledger_check(engine)["ok"]


def test_migration_seeds_the_spec_thresholds(engine):
    from domain.buffers import DEFAULT_THRESHOLDS
    reset(engine)
    with engine.connect() as conn:
        seeded = {k: v.thresholds for k, v in store.load_buffers(conn).items()}
    assert seeded == DEFAULT_THRESHOLDS


def test_cycle_twice_while_a_job_is_in_flight_creates_no_second_job(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    first = cycle_now(engine)
    assert len(first) == 1
    j = job(engine, first[0])
    assert (j.direction, j.source_account, j.destination_account) == ("USD->USDC", FIAT, USDC_BUF)
    assert j.source_amount == usd(60_000)  # 45,000 short of target -> 3 batches of 20,000
    assert cycle_now(engine) == []  # pending
    submission.submit(j.id, engine)
    assert job(engine, j.id).status == conv.SUBMITTED
    assert cycle_now(engine) == []  # with the provider
    polling.poll(j.id, engine)
    assert job(engine, j.id).status == conv.COMPLETED
    assert cycle_now(engine) == []  # refilled: nothing below min
    assert balance(engine, USDC_BUF) == usdc(65_000)


def test_concurrent_replenishments_for_one_buffer_are_refused_by_the_database(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    cycle_now(engine)
    from sqlalchemy.exc import IntegrityError
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        with pytest.raises(IntegrityError):
            store.insert_job(uow.conn, kind="replenishment", direction="USD->USDC",
                             source_type="system_buffer_fiat", destination_type="system_buffer_usdc",
                             amount=1, requested_by="t", trigger="manual")


def test_completion_moves_transit_through_provider_at_its_rate_and_books_the_fee(engine):
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(250_000))
    name = add_provider(engine, config=sim(rate_ppm=999_000, fee_bps=25, latency_polls=2))
    [job_id] = cycle_now(engine)
    j = job(engine, job_id)
    assert j.source_amount == usdc(50_000) and j.direction == "USDC->USD"  # capped at usdc's min
    fees_before = balance(engine, "fees:conversion:USD")
    submission.submit(job_id, engine)
    assert balances(engine, USDC_BUF, "transit:USDC") == {USDC_BUF: usdc(10_000),
                                                          "transit:USDC": usdc(50_000)}
    polling.poll(job_id, engine)
    assert job(engine, job_id).status == conv.PROCESSING
    polling.poll(job_id, engine)
    done = job(engine, job_id)
    # 50,000 USDC at 0.999 = 49,950.00 USD; 25 bps fee = 124.875 -> 124.88 (fee rounds up)
    assert (done.status, done.destination_amount, done.fee_amount) == (conv.COMPLETED, 4_982_512, 12_488)
    assert balance(engine, FIAT) == usd(10_000) + 4_982_512
    assert balance(engine, "fees:conversion:USD") - fees_before == 12_488
    assert balance(engine, "transit:USDC") == 0
    assert balance(engine, f"provider:{name}:USDC") == usdc(50_000)
    assert balance(engine, f"provider:{name}:USD") == -4_995_000
    assert ledger_check(engine)["ok"]
    [event] = outbox_events(engine, "conversion.completed", job_id)
    assert event["data"]["destination_amount"] == 4_982_512
    with engine.connect() as conn:
        trail = [t["to"] for t in store.transitions(conn, job_id)]
    assert trail == [conv.PENDING, conv.SUBMITTED, conv.PROCESSING, conv.COMPLETED]


def test_provider_errors_fall_back_in_priority_order_each_with_its_own_key(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    erroring = add_provider(engine, priority=1, config=sim(fail_mode="error"))
    rejecting = add_provider(engine, priority=2, config=sim(fail_mode="reject"))
    good = add_provider(engine, priority=3)
    spare = add_provider(engine, priority=4)
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    tried = attempts(engine, job_id)
    assert [(a.provider, a.status) for a in tried] == [
        (erroring, "error"), (rejecting, "rejected"), (good, "accepted")]
    assert len({a.idempotency_key for a in tried}) == 3
    j = job(engine, job_id)
    assert (j.status, j.provider, j.attempts) == (conv.SUBMITTED, good, 3)
    assert balance(engine, "transit:USD") == usd(60_000)  # moved once, not per attempt
    with engine.connect() as conn:
        counts = {p.name: (p.success_count, p.failure_count) for p in store.load_providers(conn)}
    assert counts[erroring] == (0, 1) and counts[rejecting] == (0, 1) and counts[spare] == (0, 0)
    assert drive(engine, job_id).status == conv.COMPLETED
    assert transit_total(engine) == 0


def test_a_degraded_provider_is_skipped(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    degraded = add_provider(engine, priority=1)
    seed_outcomes(engine, degraded, successes=7, failures=3)  # 70 % of 10
    healthy = add_provider(engine, priority=2)
    seed_outcomes(engine, healthy, successes=8, failures=2)  # 80 %: still healthy
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    assert [a.provider for a in attempts(engine, job_id)] == [healthy]


def test_order_limits_and_daily_volume_are_honoured(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    too_small = add_provider(engine, priority=1, max_amount=usd(50_000))
    too_big = add_provider(engine, priority=2, min_amount=usd(70_000))
    volume = add_provider(engine, priority=3, daily_limit=usd(100_000))
    fallback = add_provider(engine, priority=4)
    [first] = cycle_now(engine)  # 60,000 USD
    submission.submit(first, engine)
    assert [a.provider for a in attempts(engine, first)] == [volume]
    with engine.connect() as conn:
        used = {p.name: p.daily_volume_used for p in store.load_providers(conn)}
    assert used[volume] == usd(60_000)
    drive(engine, first)
    # a second job of 60,000 USD would exceed the 100,000 daily limit: the next one takes it
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    for name in (too_small, too_big, volume, fallback):
        _resume(engine, name)
    [second] = cycle_now(engine)
    submission.submit(second, engine)
    assert [a.provider for a in attempts(engine, second)] == [fallback]


def _resume(engine, name):
    with engine.begin() as conn:
        store.update_provider(conn, name, status="active")


def test_retries_run_out_then_failed_alert_and_transit_back_to_source(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    broken = [add_provider(engine, priority=n, config=sim(fail_mode="error")) for n in range(1, 6)]
    [job_id] = cycle_now(engine)
    assert submission.submit(job_id, engine) == conv.FAILED
    tried = attempts(engine, job_id)
    assert [a.provider for a in tried] == broken[:4]  # the first try and 3 retries
    j = job(engine, job_id)
    assert j.status == conv.FAILED and "4 attempts" in j.failure_reason
    assert balances(engine, FIAT, "transit:USD") == {FIAT: usd(150_000), "transit:USD": 0}
    assert open_alert(engine, f"conversion:failed:{job_id}") is not None
    assert len(outbox_events(engine, "conversion.failed", job_id)) == 1
    assert ledger_check(engine)["ok"]


def test_no_provider_at_all_fails_without_touching_the_source(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)  # the cycle sees it; it is paused before submission
    [job_id] = cycle_now(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_providers SET status = 'paused'"))
    assert submission.submit(job_id, engine) == conv.FAILED
    assert "no provider can take it" in job(engine, job_id).failure_reason
    assert balance(engine, FIAT) == usd(150_000)


def test_a_provider_failing_late_returns_transit_to_the_source(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, config=sim(fail_mode="fail_late", latency_polls=2))
    [job_id] = cycle_now(engine)
    j = drive(engine, job_id)
    assert j.status == conv.FAILED
    assert balances(engine, FIAT, "transit:USD", f"provider:{name}:USD") == {
        FIAT: usd(150_000), "transit:USD": 0, f"provider:{name}:USD": 0}
    with engine.connect() as conn:
        assert store.get_provider(conn, name).failure_count == 1
    assert ledger_check(engine)["ok"]


def test_a_timed_out_submission_the_provider_did_take_is_not_sent_elsewhere(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    slow = add_provider(engine, priority=1, config=sim(fail_mode="timeout"))
    other = add_provider(engine, priority=2)
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    assert [(a.provider, a.status) for a in attempts(engine, job_id)] == [(slow, "accepted")]
    with engine.connect() as conn:
        orders = conn.execute(text("SELECT provider FROM simulated_provider_orders "
                                   "WHERE idempotency_key LIKE :k"), {"k": f"ballast-{job_id}-%"}).all()
    assert [o.provider for o in orders] == [slow]
    set_mode(engine, slow, "none")
    assert drive(engine, job_id).status == conv.COMPLETED
    assert other


def test_redelivery_after_a_crash_asks_the_provider_instead_of_submitting_again(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, priority=1)
    add_provider(engine, priority=2)
    [job_id] = cycle_now(engine)
    # The first worker records the attempt, the provider accepts, the worker dies.
    sub = submission._prepare_attempt(engine, job_id)
    submission._call_provider(sub, engine)
    assert attempts(engine, job_id)[0].status == "submitting"
    # The message is redelivered:
    submission.submit(job_id, engine)
    [a] = attempts(engine, job_id)
    assert (a.provider, a.status, a.idempotency_key) == (name, "accepted", sub.attempt.idempotency_key)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM simulated_provider_orders WHERE "
                                 "idempotency_key LIKE :k"), {"k": f"ballast-{job_id}-%"}).scalar_one() == 1
    assert drive(engine, job_id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) == usdc(65_000)


def test_a_crash_before_the_provider_heard_resends_the_same_key(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, priority=1)
    [job_id] = cycle_now(engine)
    sub = submission._prepare_attempt(engine, job_id)  # died before calling the provider
    submission.submit(job_id, engine)
    [a] = attempts(engine, job_id)
    assert (a.status, a.idempotency_key) == ("accepted", sub.attempt.idempotency_key)


def test_a_stale_job_alerts_keeps_polling_and_completes_exactly_once(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, priority=1, config=sim(fail_mode="stick"))
    add_provider(engine, priority=2)
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    polling.poll(job_id, engine)
    assert job(engine, job_id).status == conv.PROCESSING
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_jobs SET submitted_at = submitted_at - :d WHERE id = :j"),
                     {"d": conv.STALE_AFTER + timedelta(minutes=1), "j": job_id})
    polling.poll(job_id, engine)
    assert job(engine, job_id).status == conv.PROCESSING and job(engine, job_id).stale_at
    assert open_alert(engine, f"conversion:stale:{job_id}") is not None
    assert cycle_now(engine) == []  # a stale job is still in flight: nothing resubmitted
    assert len(attempts(engine, job_id)) == 1
    set_mode(engine, name, "none")  # the provider gets round to it
    for _ in range(3):
        polling.poll(job_id, engine)
    assert job(engine, job_id).status == conv.COMPLETED
    with engine.connect() as conn:
        completions = conn.execute(text("SELECT count(*) FROM ledger_transactions WHERE "
                                        "idempotency_key = :k"), {"k": f"conversion:{job_id}:complete"}).scalar_one()
    assert completions == 1
    assert len(outbox_events(engine, "conversion.completed", job_id)) == 1
    assert open_alert(engine, f"conversion:stale:{job_id}") is None
    assert balance(engine, USDC_BUF) == usdc(65_000)


def test_a_completion_reported_twice_completes_once(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, config=sim(latency_polls=0))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    j = job(engine, job_id)
    [a] = attempts(engine, job_id)
    from infra.providers import Report
    report = Report("completed", "r", usdc(60_000), 0)
    for _ in range(2):
        with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
            current = store.get_job(uow.conn, job_id, lock=True)
            polling._apply_report(uow, current, a, report)
            uow.commit()
    assert job(engine, job_id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) == usdc(65_000)
    assert j.status == conv.SUBMITTED


def test_scheduled_cycles_wait_while_auto_rebalancing_is_paused(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        cycle.set_auto_rebalance(uow, False, "ops")
        uow.commit()
    assert cycle_now(engine, "scheduled") == []
    assert len(cycle_now(engine, "manual")) == 1  # an operator's cycle still runs


def test_cannot_replenish_alerts_and_resolves_once_a_job_is_possible(engine):
    reset(engine, usdc_buffer=usdc(10_000), fiat=usd(10_000), broker=usd(250_000))
    add_provider(engine)
    assert cycle_now(engine) == []  # fiat is low, but usdc is at its own min
    assert open_alert(engine, "buffer:cannot_replenish:system_buffer_fiat") is not None
    assert open_alert(engine, "buffer:critical_low:system_buffer_fiat") is not None
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        cycle.record_flow(uow, "system_buffer_usdc", usdc(30_000), "funding")
        uow.commit()
    [job_id] = cycle_now(engine)
    assert job(engine, job_id).source_amount == usdc(30_000)  # all above usdc's min
    assert open_alert(engine, "buffer:cannot_replenish:system_buffer_fiat") is None


def test_below_the_provider_minimum_no_job(engine):
    reset(engine, usdc_buffer=usdc(10_500), fiat=usd(10_000), broker=usd(250_000))
    add_provider(engine, min_amount=usd(1_000))
    assert cycle_now(engine) == []
    alert = open_alert(engine, "buffer:cannot_replenish:system_buffer_fiat")
    assert "provider minimum" in alert.subject


def test_over_capitalized_buffer_alerts_and_resolves(engine):
    reset(engine, usdc_buffer=usdc(100_001), fiat=usd(150_000), broker=usd(250_000))
    cycle_now(engine)
    assert open_alert(engine, "buffer:over_capitalized:system_buffer_usdc") is not None
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(150_000), broker=usd(250_000))
    cycle_now(engine)
    assert open_alert(engine, "buffer:over_capitalized:system_buffer_usdc") is None


def test_manual_conversion_and_cancel(engine):
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, config=sim(fail_mode="stick"))
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        with pytest.raises(Refused):
            levers.convert_manually(uow, source_type="broker_operational",
                                  destination_type="system_buffer_usdc", amount=usd(250_001),
                                  performed_by="ops")
        job_id = levers.convert_manually(uow, source_type="broker_operational",
                                       destination_type="system_buffer_usdc", amount=usd(1_000),
                                       performed_by="ops")
        uow.commit()
    submission.submit(job_id, engine)
    assert balance(engine, BROKER) == usd(249_000)
    with pytest.raises(Refused, match="may still convert"):
        levers.cancel(job_id, by="ops", reason="stuck")
    levers.cancel(job_id, by="ops", reason="provider confirmed it dropped the order", force=True)
    assert job(engine, job_id).status == conv.CANCELLED
    assert balances(engine, BROKER, "transit:USD") == {BROKER: usd(250_000), "transit:USD": 0}


def test_ledger_balances_after_any_mix_of_completions_and_failures(engine):
    import random
    rnd = random.Random(6)
    modes = ["none", "none", "error", "reject", "fail_late", "timeout"]
    for round_ in range(8):
        reset(engine, usdc_buffer=usdc(rnd.randint(0, 9_999)), fiat=usd(rnd.randint(0, 300_000)),
              broker=usd(rnd.randint(0, 300_000)))
        names = [add_provider(engine, priority=p, config=sim(fail_mode=rnd.choice(modes),
                                                            rate_ppm=rnd.randint(990_000, 1_010_000),
                                                            fee_bps=rnd.randint(0, 50),
                                                            latency_polls=rnd.randint(0, 2)))
                 for p in range(rnd.randint(1, 3))]
        created = cycle_now(engine)
        for job_id in created:
            for name in names:
                if rnd.random() < 0.5:
                    set_mode(engine, name, "none")
            drive(engine, job_id)
        statuses = {job(engine, j).status for j in created}
        assert statuses <= {conv.COMPLETED, conv.FAILED}, (round_, statuses)
        assert transit_total(engine) == 0
        assert ledger_check(engine)["ok"]


def _in_threads(fn, n):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(fn) for _ in range(n)]]


def test_cycles_racing_in_parallel_create_one_job(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    created = [j for batch in _in_threads(lambda: cycle_now(engine), 6) for j in batch]
    assert len(created) == 1


def test_the_same_job_submitted_by_parallel_workers_is_sent_once(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    [job_id] = cycle_now(engine)
    assert set(_in_threads(lambda: submission.submit(job_id, engine), 5)) == {conv.SUBMITTED}
    [a] = attempts(engine, job_id)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM simulated_provider_orders WHERE "
                                 "idempotency_key LIKE :k"), {"k": f"ballast-{job_id}-%"}).scalar_one() == 1
    assert balance(engine, "transit:USD") == usd(60_000)
    assert set(_in_threads(lambda: polling.poll(job_id, engine), 5)) <= {True, False}
    assert drive(engine, job_id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) == usdc(65_000)


# --- buffers sharing a source (SPEC §3: the source stays at or above its own min) ----------

def test_two_buffers_on_one_source_in_one_cycle_never_take_it_below_its_min(engine):
    # usdc spares 50,000 above its min; fiat and broker both want more than that
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(10_000))
    add_provider(engine)
    created = cycle_now(engine)
    assert [job(engine, j).destination_account for j in created] == [BROKER]
    assert job(engine, created[0]).source_amount == usdc(50_000)
    shortfall = open_alert(engine, "buffer:shortfall:broker_operational")
    assert shortfall is not None and shortfall.data["missing"] == usdc(150_000)
    assert "can spare nothing" in open_alert(
        engine, "buffer:cannot_replenish:system_buffer_fiat").subject
    for job_id in created:
        assert drive(engine, job_id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) == usdc(10_000)  # exactly its min, never below
    assert ledger_check(engine)["ok"]


def test_a_pending_job_holds_its_amount_against_the_next_cycle_and_manual_conversions(engine):
    reset(engine, usdc_buffer=usdc(160_000), fiat=usd(150_000), broker=usd(10_000))
    add_provider(engine)
    [first] = cycle_now(engine)  # broker: one whole batch of 100,000 of the 150,000 spare
    assert job(engine, first).source_amount == usdc(100_000)
    # fiat drains while the broker's job is still pending (not in transit yet)
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        cycle.record_flow(uow, "system_buffer_fiat", -usd(140_000), "payouts")
        uow.commit()
    [second] = cycle_now(engine)
    assert job(engine, second).source_amount == usdc(50_000)  # what is left, not 150,000
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        with pytest.raises(Refused, match="can spare 0"):
            levers.convert_manually(uow, source_type="system_buffer_usdc",
                                  destination_type="broker_operational", amount=1,
                                  performed_by="ops")
    for job_id in (second, first):  # the newer job submits first: both still fit
        assert drive(engine, job_id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) == usdc(10_000)
    assert ledger_check(engine)["ok"]


def test_submission_refuses_a_job_whose_source_was_drained_below_what_it_may_take(engine):
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(150_000), broker=usd(10_000))
    add_provider(engine)
    [job_id] = cycle_now(engine)
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        cycle.record_flow(uow, "system_buffer_usdc", -1, "on-chain payout")  # one micro-USDC
        uow.commit()
    assert submission.submit(job_id, engine) == conv.FAILED
    assert "can spare" in job(engine, job_id).failure_reason
    assert balances(engine, USDC_BUF, "transit:USDC") == {USDC_BUF: usdc(60_000) - 1,
                                                          "transit:USDC": 0}
    assert ledger_check(engine)["ok"]


def test_cycles_and_manual_conversions_racing_never_take_a_source_below_its_min(engine):
    reset(engine, usdc_buffer=usdc(90_000), fiat=usd(10_000), broker=usd(10_000))
    add_provider(engine)

    def manual():
        try:
            with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
                levers.convert_manually(uow, source_type="system_buffer_usdc",
                                      destination_type="system_buffer_fiat",
                                      amount=usdc(30_000), performed_by="ops")
                uow.commit()
        except Refused:
            pass

    def either(i):
        return cycle_now(engine) if i % 2 else manual()

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(either, range(6)))
    with engine.connect() as conn:
        pending = store.list_jobs(conn, active_only=True, limit=100)
    assert sum(j.source_amount for j in pending if j.source_type == "system_buffer_usdc") \
        <= usdc(80_000)
    for j in pending:
        assert drive(engine, j.id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) >= usdc(10_000)
    assert ledger_check(engine)["ok"]
