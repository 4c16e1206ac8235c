"""The operator views of migration 0007: SQL held equal to the domain, and the CLI is the view."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from sqlalchemy import text

from domain.buffers import Thresholds, status as buffer_status
from domain.providers import is_healthy
from infra.cli.main import cli
from tests.steps import polling, submission, levers
from infra.uow import UnitOfWork
from tests.harness import uid
from tests.infra.test_treasury_kit import (
    add_provider, cycle_now, ledger_check, reset, seed_outcomes, set_mode, usd, usdc,
)

pytestmark = pytest.mark.usefixtures("clean_queues")


def run_json(*args):
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def psql(engine, sql: str) -> list[dict]:
    """What an operator with only psql sees (timestamps as the CLI prints them)."""
    with engine.connect() as conn:
        return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r._mapping.items()}
                for r in conn.execute(text(sql))]


@st.composite
def thresholds_and_balance(draw):
    mn = draw(st.integers(0, 10**12))
    target = draw(st.integers(mn + 1, mn + 10**12))
    mx = draw(st.integers(target + 1, target + 10**12))
    return Thresholds(mn, target, mx, 1), draw(st.integers(-10, mx + 10**6))


@settings(max_examples=200)
@given(thresholds_and_balance())
def test_the_sql_buffer_status_is_the_domain_rule(engine, case):
    t, balance = case
    with engine.connect() as conn:
        sql = conn.execute(text("SELECT treasury_buffer_status(:b, :mn, :t, :mx)"),
                           {"b": balance, "mn": t.min, "t": t.target, "mx": t.max}).scalar_one()
    assert sql == buffer_status(balance, t)


@settings(max_examples=200)
@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_the_sql_provider_health_is_the_domain_rule(engine, successes, failures):
    with engine.connect() as conn:
        sql = conn.execute(text("SELECT treasury_provider_stats_healthy(:s, :f)"),
                           {"s": successes, "f": failures}).scalar_one()
    assert sql is is_healthy(successes, failures)


def test_ballast_buffers_json_is_v_buffer_status(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(600_000))
    view = psql(engine, "SELECT * FROM v_buffer_status")
    assert run_json("buffers") == view
    assert {r["account_type"]: r["status"] for r in view} == {
        "broker_operational": "OVER_CAPITALIZED", "system_buffer_fiat": "HEALTHY",
        "system_buffer_usdc": "CRITICAL_LOW"}


def test_ballast_providers_json_is_v_provider_health(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    good = add_provider(engine, priority=1)
    degraded = add_provider(engine, priority=2)
    seed_outcomes(engine, degraded, successes=7, failures=3)
    down = add_provider(engine, priority=3)
    set_mode(engine, down, "error")
    polling.probe_all(engine)
    [job_id] = cycle_now(engine)
    submission.submit(job_id, engine)  # today's volume for `good`
    view = psql(engine, "SELECT * FROM v_provider_health")
    assert run_json("providers") == view
    rows = {r["name"]: r for r in view}
    assert (rows[good]["healthy"], rows[good]["probe"], rows[good]["daily_volume_used"]) == (
        True, "up", usd(60_000))
    assert (rows[degraded]["healthy"], rows[degraded]["success_rate"]) == (False, 0.7)
    assert (rows[down]["healthy"], rows[down]["probe"]) == (False, "down")
    assert rows[down]["probed_at"] is not None
    assert ledger_check(engine)["ok"]


def test_ballast_conversions_active_json_is_v_active_conversion_jobs(engine):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, priority=1)
    created = cycle_now(engine)
    with UnitOfWork(actor="convert", request_id=uid("manual"), engine=engine) as uow:
        created.append(levers.convert_manually(uow, source_type="broker_operational",
                                             destination_type="system_buffer_usdc",
                                             amount=usd(1_000), performed_by="ops"))
        uow.commit()
    submission.submit(created[0], engine)
    cli_rows = run_json("conversions", "--active")
    view = psql(engine, "SELECT job_id, direction, source_amount, destination_amount, status, "
                        "provider, attempts, created_at FROM v_active_conversion_jobs")
    assert cli_rows == view
    assert sorted(r["job_id"] for r in view) == sorted(created)
    assert {r["status"] for r in view} == {"pending", "provider_submitted"}
    assert ledger_check(engine)["ok"]
