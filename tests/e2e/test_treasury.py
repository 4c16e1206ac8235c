"""The treasury engine through real RabbitMQ, PostgreSQL and worker processes."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from domain import conversions as conv
from infra import rabbit
from infra.providers.http import make_config as http_config
from tests.harness import Worker, send, uid, wait_until
from tests.infra.test_treasury_kit import (
    FakeHttpProvider, add_provider, attempts, balance, job, ledger_check, reset, sim,
    transit_total, usd, usdc,
)

pytestmark = pytest.mark.e2e

USDC_BUF = "buffer:system_buffer_usdc"


def jobs_for(engine, since_id: int, destination: str = USDC_BUF) -> list[int]:
    with engine.connect() as conn:
        return [r.id for r in conn.execute(text(
            "SELECT id FROM conversion_jobs WHERE id > :s AND destination_account = :d ORDER BY id"),
            {"s": since_id, "d": destination})]


def last_job_id(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COALESCE(max(id), 0) FROM conversion_jobs")).scalar_one()


def poll_until_finished(env, engine, job_id: int, timeout: float = 60) -> None:
    def finished():
        if job(engine, job_id).status in conv.TERMINAL:
            return True
        send(env, "poll_conversion", request_id=uid("poll"), job_id=None)
        return False

    wait_until(finished, timeout, interval=0.7, what=f"job {job_id} to finish")


def dead(env, actor):
    return [d.summary() for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
            if d.body.get("actor_name") == actor]


def test_a_drained_buffer_is_refilled_failing_over_to_the_next_provider(env, engine, worker, events):
    reset(engine, usdc_buffer=usdc(50_000), fiat=usd(150_000), broker=usd(250_000))
    failing = add_provider(engine, priority=1, config=sim(fail_mode="error"))
    steady = add_provider(engine, priority=2, config=sim(rate_ppm=999_500, fee_bps=10,
                                                         latency_polls=2))
    since = last_job_id(engine)
    send(env, "record_buffer_flow", request_id=uid("flow"), account_type="system_buffer_usdc",
         amount=-usdc(45_000), reference="on-chain payouts")
    wait_until(lambda: balance(engine, USDC_BUF) == usdc(5_000), what="the withdrawal")

    slot = uid("slot")
    send(env, "run_settlement_cycle", request_id=f"schedule:settlement_cycle:{slot}",
         trigger="scheduled")
    send(env, "run_settlement_cycle", request_id=f"schedule:settlement_cycle:{slot}",
         trigger="scheduled")  # the same firing twice
    send(env, "run_settlement_cycle", request_id=uid("manual"), trigger="manual")
    [job_id] = wait_until(lambda: jobs_for(engine, since), what="a replenishment job")
    wait_until(lambda: job(engine, job_id).status == conv.SUBMITTED, what="submission")
    send(env, "run_settlement_cycle", request_id=uid("manual"), trigger="manual")
    assert [(a.provider, a.status) for a in attempts(engine, job_id)] == [
        (failing, "error"), (steady, "accepted")]

    poll_until_finished(env, engine, job_id)
    done = job(engine, job_id)
    assert done.status == conv.COMPLETED
    assert jobs_for(engine, since) == [job_id]  # every cycle saw it in flight
    # 60,000 USD at 0.9995 = 59,970 USDC, 10 bps fee = 59.97 USDC
    assert (done.destination_amount, done.fee_amount) == (usdc(59_970) - 59_970_000, 59_970_000)
    assert balance(engine, USDC_BUF) == usdc(5_000) + done.destination_amount
    completed = wait_until(lambda: [e for e in events.named("conversion.completed")
                                    if e["data"]["job_id"] == job_id])
    assert completed[0]["recipient"] == "admin"
    assert transit_total(engine) == 0
    assert ledger_check(engine)["ok"]


def test_a_worker_killed_between_submission_and_recording_does_not_convert_twice(env, engine,
                                                                                clean_queues):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    first = add_provider(engine, priority=1)
    add_provider(engine, priority=2)
    since = last_job_id(engine)
    w = Worker(env, processes=1, threads=2, faults="after_provider_submit:submit_conversion").start()
    try:
        send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
        w.wait_dead(60)
        [job_id] = jobs_for(engine, since)
        [a] = attempts(engine, job_id)
        assert (a.provider, a.status) == (first, "submitting")  # the provider has it, we did not record
        w.start()  # RabbitMQ redelivers the unacknowledged submit_conversion
        wait_until(lambda: job(engine, job_id).status == conv.SUBMITTED, 60, what="recovery")
        [again] = attempts(engine, job_id)
        assert (again.idempotency_key, again.status) == (a.idempotency_key, "accepted")
        poll_until_finished(env, engine, job_id)
    finally:
        w.stop()
    with engine.connect() as conn:
        orders = conn.execute(text("SELECT count(*) FROM simulated_provider_orders "
                                   "WHERE idempotency_key LIKE :k"), {"k": f"ballast-{job_id}-%"}).scalar_one()
    assert orders == 1
    assert job(engine, job_id).status == conv.COMPLETED
    assert balance(engine, USDC_BUF) == usdc(65_000)
    assert transit_total(engine) == 0
    assert ledger_check(engine)["ok"]


def test_an_http_provider_converts_through_the_workers(env, engine, worker):
    fake = FakeHttpProvider(fee_bps=20, polls_to_finish=2)
    fake.script = ["503"]  # retried with the same key
    try:
        reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(250_000))
        add_provider(engine, kind="http", config=http_config(fake.url, timeout_ms=2_000, retries=2,
                                                              backoff_ms=50))
        since = last_job_id(engine)
        send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
        [job_id] = wait_until(lambda: jobs_for(engine, since, "buffer:system_buffer_fiat"))
        poll_until_finished(env, engine, job_id)
    finally:
        fake.close()
    done = job(engine, job_id)
    assert done.status == conv.COMPLETED
    assert len(fake.orders) == 1 and len({k for k, _ in fake.posts}) == 1
    # 50,000 USDC (capped at usdc's min) -> 50,000 USD, 20 bps fee = 100 USD
    assert (done.source_amount, done.destination_amount, done.fee_amount) == (
        usdc(50_000), usd(49_900), usd(100))
    assert ledger_check(engine)["ok"]


def test_a_bad_or_impossible_buffer_flow_is_dead_lettered_with_its_reason(env, engine, worker):
    reset(engine, fiat=usd(100))
    zero, overdraw = uid("zero"), uid("over")
    send(env, "record_buffer_flow", request_id=zero, account_type="system_buffer_fiat", amount=0,
         reference="x")
    send(env, "record_buffer_flow", request_id=overdraw, account_type="system_buffer_fiat",
         amount=-usd(101), reference="too much")
    letters = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(
        {d["request_id"]: d for d in dead(env, "record_buffer_flow") if d["request_id"] in (zero, overdraw)}))
    assert "zero" in letters[zero]["reason"]
    assert "would go negative" in letters[overdraw]["reason"]
    assert balance(engine, "buffer:system_buffer_fiat") == usd(100)


def test_two_buffers_on_one_source_low_together_through_the_workers(env, engine, worker):
    # fiat and broker both refill from usdc, which can spare 50,000 above its min
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(10_000))
    add_provider(engine, config=sim(latency_polls=1))
    since = last_job_id(engine)
    send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
    send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
    [job_id] = wait_until(lambda: jobs_for(engine, since, "buffer:broker_operational"),
                          what="the broker's job")
    poll_until_finished(env, engine, job_id)
    assert job(engine, job_id).status == conv.COMPLETED
    assert jobs_for(engine, since, "buffer:system_buffer_fiat") == []  # nothing left to spare
    assert balance(engine, USDC_BUF) == usdc(10_000)  # at its min, never below
    assert transit_total(engine) == 0
    assert ledger_check(engine)["ok"]
