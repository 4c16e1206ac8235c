"""Treasury alert conditions (run by the ``evaluate_alerts`` sweep every minute)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from domain import conversions as conv
from services.conditions import CONDITIONS
from tests.steps import polling, submission  # also registers the conditions
from infra.uow import UnitOfWork
from tests.harness import uid
from tests.infra.test_treasury_kit import (
    add_provider, cycle_now, drive, open_alert, reset, seed_outcomes, sim, usd, usdc,
)

pytestmark = pytest.mark.usefixtures("clean_queues")


def evaluate(engine, name):
    with UnitOfWork(actor="evaluate_alerts", request_id=uid(), engine=engine) as uow:
        CONDITIONS[name](uow)
        uow.commit()


def test_the_treasury_conditions_are_registered():
    assert {"treasury.buffers", "treasury.providers", "treasury.failure_rate",
            "treasury.stale_jobs"} <= set(CONDITIONS)


def test_buffer_critical_low_is_raised_and_resolved_by_the_sweep(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    evaluate(engine, "treasury.buffers")
    alert = open_alert(engine, "buffer:critical_low:system_buffer_usdc")
    assert alert is not None and alert.severity == "critical"
    assert open_alert(engine, "buffer:critical_low:system_buffer_fiat") is None
    reset(engine, usdc_buffer=usdc(50_000), fiat=usd(150_000), broker=usd(250_000))
    evaluate(engine, "treasury.buffers")
    assert open_alert(engine, "buffer:critical_low:system_buffer_usdc") is None


def test_a_degraded_provider_alerts_until_it_recovers(engine):
    reset(engine)
    name = add_provider(engine)
    seed_outcomes(engine, name, successes=7, failures=3)
    evaluate(engine, "treasury.providers")
    assert open_alert(engine, f"provider:degraded:{name}") is not None
    seed_outcomes(engine, name, successes=10, failures=0)  # 17 of 20: 85 %
    evaluate(engine, "treasury.providers")
    assert open_alert(engine, f"provider:degraded:{name}") is None


def test_failure_rate_over_five_percent_in_the_last_day(engine):
    reset(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_jobs SET finished_at = finished_at - interval '2 days' "
                          "WHERE finished_at IS NOT NULL"))

    def finished(status, n):
        with engine.begin() as conn:
            for _ in range(n):
                conn.execute(text(
                    "INSERT INTO conversion_jobs (kind, direction, source_account, "
                    "destination_account, source_currency, destination_currency, source_amount, "
                    "status, requested_by, trigger, finished_at) VALUES ('manual', 'USD->USDC', "
                    "'buffer:system_buffer_fiat', 'buffer:system_buffer_usdc', 'USD', 'USDC', 1, "
                    ":s, 'seed', 'seed', now())"), {"s": status})

    finished("completed", 19)
    finished("failed", 1)  # exactly 5 %: fine
    evaluate(engine, "treasury.failure_rate")
    assert open_alert(engine, "conversion:failure_rate") is None
    finished("failed", 1)  # 2 of 21
    evaluate(engine, "treasury.failure_rate")
    assert open_alert(engine, "conversion:failure_rate") is not None


def test_a_stale_job_is_flagged_by_the_sweep_and_cleared_when_it_finishes(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, config=sim(fail_mode="stick"))
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)
    evaluate(engine, "treasury.stale_jobs")
    assert open_alert(engine, f"conversion:stale:{job_id}") is None
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_jobs SET submitted_at = now() - :d WHERE id = :j"),
                     {"d": conv.STALE_AFTER, "j": job_id})
    evaluate(engine, "treasury.stale_jobs")
    assert open_alert(engine, f"conversion:stale:{job_id}") is not None
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_providers SET config = jsonb_set(config, "
                          "'{fail_mode}', '\"none\"') WHERE name = :n"), {"n": name})
    assert drive(engine, job_id).status == conv.COMPLETED
    evaluate(engine, "treasury.stale_jobs")
    assert open_alert(engine, f"conversion:stale:{job_id}") is None


def test_a_pending_job_nobody_submitted_is_handed_back_by_polling(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine)
    [job_id] = cycle_now(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_jobs SET updated_at = now() - :d WHERE id = :j"),
                     {"d": timedelta(seconds=polling.RESUBMIT_PENDING_AFTER_S + 1), "j": job_id})
    polling.poll_all(engine)
    with engine.connect() as conn:
        resent = conn.execute(text(
            "SELECT count(*) FROM outbox WHERE kind = 'message' AND routing_key = "
            "'ballast.step.conversions' AND (body->'kwargs'->>'job_id')::bigint = :j"),
            {"j": job_id}).scalar_one()
    assert resent == 2  # the cycle's, and polling's
