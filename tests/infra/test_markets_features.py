"""Issue 14 on market payouts, on the real PostgreSQL through the actors' bodies: disputes
(confirmed, rolled back, re-resolved) and a settlement that fails for good, then is retried."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

import actors.markets as market_actors
from domain.errors import Refused
from infra.cli import output
from infra.cli.main import cli
from infra import ledger
from services.markets import failure_alert_key, retry
from infra.uow import UnitOfWork
from tests.harness import uid
from tests.infra.test_markets import STUB, Run, balances, commit, fund, open_market, show


def human(*args: str) -> str:
    """``ballast ARGS`` for people, on a wide console (rich wraps at 80 columns)."""
    width = output.console.width
    output.console.width = 500
    try:
        return CliRunner().invoke(cli, list(args)).output
    finally:
        output.console.width = width


class DisputeRun(Run):
    """The market tests' runner, with the dispute commands too."""

    def __call__(self, actor: str, **kwargs):
        from tests.infra import test_markets

        extra = {"dispute_market": market_actors.dispute_market,
                 "confirm_market": market_actors.confirm_market}
        saved = dict(test_markets.ACTORS)
        test_markets.ACTORS.update(extra)
        try:
            return super().__call__(actor, **kwargs)
        finally:
            test_markets.ACTORS.clear()
            test_markets.ACTORS.update(saved)


@pytest.fixture
def run(engine):
    return DisputeRun(engine)


def settled_market(run, engine, winner="yes-opt"):
    m = open_market(run, kind="binary", options=("yes-opt", "no-opt"))
    a, b = uid("u"), uid("u")
    fund(run, [a, b])
    commit(run, m, a, 10_000, option_id="yes-opt")
    commit(run, m, b, 30_000, option_id="no-opt")
    run("resolve_market", market_id=m, winning_option_id=winner, resolved_by="ops")
    run.settle_pending()
    return m, a, b


def money(engine, users) -> tuple:
    codes = [f"user:{u}:NGN" for u in users] + ["house:NGN", "creator:creator1:NGN"]
    with engine.connect() as conn:
        entries = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
    return balances(engine, codes), entries


def test_a_disputed_market_is_held_then_confirmed_without_moving_money(run, engine):
    m, a, b = settled_market(run, engine)
    before = money(engine, [a, b])
    run("dispute_market", market_id=m, reason="the referee was bribed", disputed_by="u-claire")
    doc = show(engine, m)
    assert doc["status"] == "disputed"
    assert (doc["dispute"]["status"], doc["dispute"]["disputed_by"], doc["dispute"]["reason"]) == \
        ("open", "u-claire", "the referee was bribed")
    with pytest.raises(Refused, match="already disputed"):  # not twice at once
        run("dispute_market", market_id=m, reason="again", disputed_by="u-dan")
    with pytest.raises(Refused, match="disputed"):  # no commitments, no other resolution
        commit(run, m, a, 1_000, option_id="yes-opt")
    with pytest.raises(Refused, match="roll it back"):
        run("resolve_market", market_id=m, winning_option_id="no-opt", resolved_by="ops")

    run("confirm_market", market_id=m, confirmed_by="ops-ada", note="video reviewed")
    doc = show(engine, m)
    assert doc["status"] == "settled"
    assert (doc["dispute"]["status"], doc["dispute"]["ended_by"], doc["dispute"]["end_note"]) == \
        ("confirmed", "ops-ada", "video reviewed")
    assert money(engine, [a, b]) == before  # confirming moves nothing
    shown = human("market", "show", m)
    assert "dispute" in shown and "confirmed by ops-ada" in shown
    with pytest.raises(Refused, match="not disputed"):
        run("confirm_market", market_id=m, confirmed_by="ops-ada")
    with engine.connect() as conn:
        events = conn.execute(text("SELECT body FROM outbox WHERE event_name IN "
                                   "('market.disputed', 'market.confirmed') "
                                   "AND body->'data'->>'market_id' = :m ORDER BY id"),
                              {"m": m}).scalars().all()
    assert [e["event"] for e in events] == ["market.disputed", "market.confirmed"]


def test_a_dispute_rolled_back_then_re_resolved_records_how_it_ended(run, engine):
    m, a, b = settled_market(run, engine, winner="yes-opt")
    run("dispute_market", market_id=m, reason="wrong winner", disputed_by="u-bob")
    run.rollback(m, reason="the dispute holds")
    doc = show(engine, m)
    assert doc["status"] == "closed"
    assert (doc["dispute"]["status"], doc["dispute"]["ended_by"], doc["dispute"]["end_note"]) == \
        ("rolled_back", "ops", "the dispute holds")
    assert doc["dispute"]["reresolved_outcome"] is None
    run("resolve_market", market_id=m, winning_option_id="no-opt", resolved_by="ops")
    run.settle_pending()
    doc = show(engine, m)
    assert doc["status"] == "settled"
    assert doc["dispute"]["reresolved_outcome"] == "no-opt"
    assert doc["dispute"]["reresolved_distribution_id"] == doc["distribution"]["distribution_id"]
    # b backed the real winner: the whole pool less fees, once.
    assert balances(engine, [f"user:{b}:NGN"])[f"user:{b}:NGN"] == 1_000_000 - 30_000 + 37_200
    with engine.connect() as conn:
        assert ledger.check(conn)["ok"]
    # The new resolution can be disputed in its turn; the first dispute's record stays.
    run("dispute_market", market_id=m, reason="still wrong", disputed_by="u-a")
    assert show(engine, m)["disputes"] == 2


def test_only_a_resolved_market_can_be_disputed(run, engine):
    m = open_market(run)
    with pytest.raises(Refused, match="only a resolved"):
        run("dispute_market", market_id=m, reason="too early", disputed_by="u")
    m2, _, _ = settled_market(run, engine)
    run.rollback(m2)
    with pytest.raises(Refused, match="closed: only a resolved"):
        run("dispute_market", market_id=m2, reason="rolled back already", disputed_by="u")


FAIL_COMPLETION = """
CREATE OR REPLACE FUNCTION test_fail_market_{tag}() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'completed' AND NEW.market_id = '{market}' THEN
        RAISE EXCEPTION 'injected: could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_fail_market_{tag} BEFORE UPDATE ON market_distributions
    FOR EACH ROW EXECUTE FUNCTION test_fail_market_{tag}();
"""


def test_a_settlement_out_of_retries_is_failed_with_an_alert_and_its_retry_pays_once(run, engine):
    m = open_market(run, kind="binary", options=("yes-opt", "no-opt"))
    a, b = uid("u"), uid("u")
    fund(run, [a, b])
    commit(run, m, a, 10_000, option_id="yes-opt")
    commit(run, m, b, 30_000, option_id="no-opt")
    run("resolve_market", market_id=m, winning_option_id="yes-opt", resolved_by="ops")
    (handoff,) = run.sent
    run.sent.clear()
    before = money(engine, [a, b])
    tag = uid("t")
    with engine.begin() as conn:
        conn.execute(text(FAIL_COMPLETION.format(tag=tag, market=m)))
    try:
        # The settlement step itself (outside a worker nobody retries: its last attempt).
        with pytest.raises(Exception, match="injected"):
            market_actors.settle_market.fn(**handoff["kwargs"])
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER test_fail_market_{tag} ON market_distributions"))
    doc = show(engine, m)
    assert (doc["status"], doc["distribution"]["status"]) == ("closed", "failed")
    assert "OperationalError" in doc["distribution"]["failure"]
    shown = human("market", "show", m)
    assert f"ballast market settle {m}" in shown
    assert money(engine, [a, b]) == before  # one transaction: nothing was paid
    dist_id = doc["distribution"]["distribution_id"]
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM alerts WHERE dedupe_key = :k"),
                              {"k": failure_alert_key(dist_id)}).scalar_one()
    assert status == "open"

    with UnitOfWork(engine=engine, broker=STUB) as uow:  # `ballast market settle ID --by ops`
        assert retry(uow, m, "ops") == dist_id
        run.sent += [r.body for r in uow._rows if r.kind == "message"]
        uow.commit()
    with pytest.raises(Refused, match="only a failed settlement is retried"):
        with UnitOfWork(engine=engine, broker=STUB) as uow:
            retry(uow, m, "ops")
    assert show(engine, m)["status"] == "settling"
    run.settle_pending()
    run.settle_pending()  # nothing more handed on: paid once
    doc = show(engine, m)
    assert (doc["status"], doc["distribution"]["status"], doc["distribution"]["retries"]) == \
        ("settled", "completed", 1)
    after, _ = money(engine, [a, b])
    assert after[f"user:{a}:NGN"] - before[0][f"user:{a}:NGN"] == 37_200  # 40,000 less 7 %
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM alerts WHERE dedupe_key = :k"),
                            {"k": failure_alert_key(dist_id)}).scalar_one() == "resolved"
        assert ledger.check(conn)["ok"]
    # The settle message of the first attempt, redelivered now, finds nothing to pay.
    market_actors.settle_market.fn(**{**handoff["kwargs"], "request_id": uid("again")})
    assert money(engine, [a, b])[0] == after
