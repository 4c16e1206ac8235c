"""Market payouts on real PostgreSQL: the actors' bodies, the bulk settlement and the rollback.

Messages do not travel here (tests/e2e does that): each command runs the actor's body in a
unit of work on the run's own database, with an in-memory broker catching what it sends.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from domain.errors import InvalidCommand, NotFound, Refused
from domain.markets import Commitment, Outcome, distribute
from infra import ledger, outbox
from infra.contract import QUEUES, parse, spec_for
from infra.markets import repository
from infra.outbox import publisher_for
from infra.uow import UnitOfWork
from services.markets import roll_back, settle
from tests.harness import uid

import actors.markets as market_actors  # noqa: E402  (registers on the global broker)
import actors.wallets as wallet_actors  # noqa: E402

STUB = StubBroker()
for _q in QUEUES:
    STUB.declare_queue(_q)

ACTORS = {a.actor_name: a for a in (market_actors.open_market, market_actors.place_commitment,
                                    market_actors.resolve_market, market_actors.void_market,
                                    market_actors.rollback_market, wallet_actors.deposit)}


class Run:
    """Runs commands the way the worker does (validate, claim, body, commit) and steps
    the settlement the resolve hands off."""

    def __init__(self, engine, batch: int = 3) -> None:
        self.engine = engine
        self.batch = batch
        self.sent: list[dict[str, Any]] = []

    def __call__(self, actor: str, **kwargs: Any) -> None:
        kwargs.setdefault("request_id", uid("r"))
        cmd = parse(spec_for(actor).schema, kwargs)
        with UnitOfWork(actor=actor, request_id=cmd.request_id, payload=cmd, engine=self.engine,
                        broker=STUB) as uow:
            if uow.claim():
                ACTORS[actor].fn.__wrapped__(cmd, uow)
                self.sent += [r.body for r in uow._rows if r.kind == "message"]
                uow.commit()

    def settle_pending(self) -> list[Any]:
        """Run every ``settle_market`` handed off so far (as the settlement step would)."""
        done = []
        while self.sent:
            body = self.sent.pop(0)
            assert body["actor_name"] == "settle_market"
            with UnitOfWork(engine=self.engine, broker=STUB) as uow:
                done.append(settle(uow, body["kwargs"]["distribution_id"], batch=self.batch))
                uow.commit()
        return done

    def rollback(self, market_id: str, reason: str = "wrong result") -> None:
        self("rollback_market", market_id=market_id, reason=reason, requested_by="ops")


@pytest.fixture
def run(engine):
    return Run(engine)


def balances(engine, codes) -> dict[str, int]:
    with engine.connect() as conn:
        got = ledger.balances(conn, codes)
    return {c: got.get(c, 0) for c in codes}


def open_market(run: Run, kind="multi", options=("red", "green", "blue"), creator_fee_bps=200,
                house_fee_bps=500, currency="NGN") -> str:
    market_id = uid("m")
    run("open_market", market_id=market_id, title="who wins", kind=kind,
        options=[{"option_id": o, "label": o.title()} for o in options], currency=currency,
        creator_id="creator1", creator_fee_bps=creator_fee_bps, house_fee_bps=house_fee_bps)
    return market_id


def fund(run: Run, users, amount=1_000_000, currency="NGN") -> None:
    for u in users:
        run("deposit", user_id=u, currency=currency, amount=amount, reference="bank")


def commit(run: Run, market_id: str, user: str, amount: int, **choice) -> str:
    cid = uid("c")
    run("place_commitment", commitment_id=cid, market_id=market_id, user_id=user, amount=amount,
        **choice)
    return cid


def show(engine, market_id):
    with engine.connect() as conn:
        return repository.show(conn, market_id)


def ledger_ok(engine):
    with engine.connect() as conn:
        result = ledger.check(conn)
    assert result["ok"], result


# --- settlement ----------------------------------------------------------------------------

def test_a_multi_option_market_settles_exactly_as_the_distribution_says(engine, run):
    users = [uid("u") for _ in range(4)]
    fund(run, users)
    m = open_market(run)
    placed = [(users[0], "red", 30_000), (users[0], "blue", 5_000), (users[1], "red", 10_001),
              (users[2], "green", 40_000), (users[3], "blue", 7_777)]
    ids = [commit(run, m, u, a, option_id=o) for u, o, a in placed]
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    assert show(engine, m)["status"] == "settling"
    before = balances(engine, [f"user:{u}:NGN" for u in users] + ["house:NGN", "creator:creator1:NGN"])
    [done] = run.settle_pending()

    expected = distribute([Commitment(c, u, o, a) for c, (u, o, a) in zip(ids, placed)],
                          Outcome.winner("red"), 500, 200)
    after = balances(engine, list(before))
    for u in users:
        code = f"user:{u}:NGN"
        assert after[code] - before[code] == expected.payouts_by_user().get(u, 0)
    assert after["house:NGN"] - before["house:NGN"] == expected.terms.house_fee + expected.breakage
    assert after["creator:creator1:NGN"] - before["creator:creator1:NGN"] == expected.terms.creator_fee
    assert balances(engine, [f"escrow:market:{m}"])[f"escrow:market:{m}"] == 0
    assert done.paid + done.terms.house_fee + done.terms.creator_fee + done.breakage == 92_778
    ledger_ok(engine)

    doc = show(engine, m)
    # Issue 14 added the dispute and the retry bookkeeping next to the contract's keys.
    assert set(doc) == {"market_id", "status", "pool", "distribution", "dispute", "disputes"}
    assert set(doc["distribution"]) == {"status", "house_fee", "creator_fee", "breakage", "lines",
                                        "distribution_id", "failure", "retries", "retried_by"}
    assert (doc["dispute"], doc["disputes"]) == (None, 0)
    assert (doc["status"], doc["pool"], doc["distribution"]["status"]) == ("settled", 92_778, "completed")
    by_id = {ln["commitment_id"]: ln for ln in doc["distribution"]["lines"]}
    assert len(by_id) == 5
    for ln in expected.lines:
        got = by_id[ln.commitment.commitment_id]
        assert set(got) == {"commitment_id", "user_id", "option_id", "amount", "payout", "profit", "method"}
        assert (got["payout"], got["profit"], got["method"]) == (ln.payout, ln.profit, "option_id")


def test_commitments_by_position_option_or_both_settle_together_with_their_method(engine, run):
    users = [uid("u") for _ in range(3)]
    fund(run, users)
    m = open_market(run, kind="binary", options=("yes-opt", "no-opt"))
    a = commit(run, m, users[0], 1_000, position="yes")
    b = commit(run, m, users[1], 3_000, option_id="yes-opt", position="yes")
    c = commit(run, m, users[2], 2_000, option_id="no-opt")
    run("resolve_market", market_id=m, winning_option_id="yes-opt", resolved_by="ops")
    run.settle_pending()
    lines = {ln["commitment_id"]: ln for ln in show(engine, m)["distribution"]["lines"]}
    assert (lines[a]["method"], lines[b]["method"], lines[c]["method"]) == ("position", "option_id", "option_id")
    assert (lines[a]["option_id"], lines[c]["option_id"]) == ("yes-opt", "no-opt")
    # pool 6000, fees 300 + 120, winner pool 5580 over 4000: 1395 and 4185
    assert (lines[a]["payout"], lines[b]["payout"], lines[c]["payout"]) == (1_395, 4_185, 0)
    assert lines[c]["profit"] == -2_000


def test_a_market_with_one_commitment_pays_the_pool_less_fees(engine, run):
    u = uid("u")
    fund(run, [u], 50_000)
    m = open_market(run)
    commit(run, m, u, 10_000, option_id="green")
    run("resolve_market", market_id=m, winning_option_id="green", resolved_by="ops")
    run.settle_pending()
    assert balances(engine, [f"user:{u}:NGN"])[f"user:{u}:NGN"] == 40_000 + 10_000 - 500 - 200


def test_nobody_on_the_winner_refunds_everyone_without_fees(engine, run):
    users = [uid("u") for _ in range(3)]
    fund(run, users, 10_000)
    m = open_market(run)
    for u in users:
        commit(run, m, u, 2_500, option_id="red")
    house = balances(engine, ["house:NGN"])["house:NGN"]
    run("resolve_market", market_id=m, winning_option_id="blue", resolved_by="ops")
    [done] = run.settle_pending()
    assert done.terms.kind == "refunded"
    assert all(v == 10_000 for v in balances(engine, [f"user:{u}:NGN" for u in users]).values())
    assert balances(engine, ["house:NGN"])["house:NGN"] == house
    assert show(engine, m)["distribution"]["house_fee"] == 0


def test_void_refunds_every_commitment_and_the_market_is_voided(engine, run):
    users = [uid("u") for _ in range(2)]
    fund(run, users, 10_000)
    m = open_market(run)
    commit(run, m, users[0], 1_000, option_id="red")
    commit(run, m, users[1], 4_000, option_id="green")
    run("void_market", market_id=m, reason="event cancelled", resolved_by="ops")
    run.settle_pending()
    assert all(v == 10_000 for v in balances(engine, [f"user:{u}:NGN" for u in users]).values())
    doc = show(engine, m)
    assert doc["status"] == "voided"
    assert {ln["payout"] - ln["amount"] for ln in doc["distribution"]["lines"]} == {0}
    ledger_ok(engine)


def test_each_user_is_told_once_what_they_won_lost_or_got_back(engine, run):
    users = [uid("u") for _ in range(3)]
    fund(run, users)
    m = open_market(run)
    commit(run, m, users[0], 1_000, option_id="red")
    commit(run, m, users[0], 1_000, option_id="green")  # one user, two options
    commit(run, m, users[1], 2_000, option_id="red")
    commit(run, m, users[2], 3_000, option_id="blue")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run.settle_pending()
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT recipient, body FROM outbox WHERE event_name = 'market.payout' "
            "AND body->'data'->>'market_id' = :m"), {"m": m}).all()
        settled = conn.execute(text(
            "SELECT body FROM outbox WHERE event_name = 'market.settled' "
            "AND body->'data'->>'market_id' = :m"), {"m": m}).scalars().all()
    assert Counter(r.recipient for r in rows) == Counter(users)
    data = {r.recipient: r.body["data"] for r in rows}
    # pool 7000, fees 350 + 140, winner pool 6510 over 3000: 2170 and 4340
    assert (data[users[0]]["result"], data[users[0]]["payout"], data[users[0]]["staked"]) == ("won", 2_170, 2_000)
    assert (data[users[1]]["payout"], data[users[1]]["profit"]) == (4_340, 2_340)
    assert (data[users[2]]["result"], data[users[2]]["payout"], data[users[2]]["profit"]) == ("lost", 0, -3_000)
    assert len(settled) == 1 and settled[0]["data"]["paid"] == 6_510


# --- twice ---------------------------------------------------------------------------------

def test_resolving_twice_pays_once(engine, run):
    users = [uid("u") for _ in range(2)]
    fund(run, users)
    m = open_market(run)
    commit(run, m, users[0], 1_000, option_id="red")
    commit(run, m, users[1], 1_000, option_id="green")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops2")  # a new request
    assert len(run.sent) == 1
    run.sent.append(dict(run.sent[0]))  # and the step's message delivered twice
    first, second = run.settle_pending()
    assert first is not None and second is None
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops3")
    assert run.sent == []
    with pytest.raises(Refused, match="roll it back"):
        run("resolve_market", market_id=m, winning_option_id="green", resolved_by="ops")
    assert balances(engine, [f"user:{users[0]}:NGN"])[f"user:{users[0]}:NGN"] == 1_000_000 - 1_000 + 1_860
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM market_distributions WHERE market_id = :m"),
                         {"m": m}).scalar_one()
    assert n == 1


def test_rolling_back_twice_reverses_once(engine, run):
    users = [uid("u") for _ in range(2)]
    fund(run, users)
    m = open_market(run)
    commit(run, m, users[0], 1_000, option_id="red")
    commit(run, m, users[1], 1_000, option_id="green")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run.settle_pending()
    run.rollback(m)
    run.rollback(m)
    with engine.connect() as conn:
        reversals = conn.execute(text(
            "SELECT count(*) FROM ledger_transactions WHERE kind = 'market_rollback' "
            "AND memo LIKE :p"), {"p": f"market {m}:%"}).scalar_one()
        posted = conn.execute(text(
            "SELECT count(*) FROM market_distribution_transactions t JOIN market_distributions d "
            "ON d.id = t.distribution_id WHERE d.market_id = :m"), {"m": m}).scalar_one()
    assert reversals == posted == 2  # one payout batch, one fees transaction
    assert show(engine, m)["distribution"]["status"] == "rolled_back"
    ledger_ok(engine)


def test_rollback_reverses_without_deleting_and_keeps_the_wallet_audit(engine, run):
    users = [uid("u") for _ in range(2)]
    fund(run, users)
    m = open_market(run)
    commit(run, m, users[0], 4_000, option_id="red")
    commit(run, m, users[1], 6_000, option_id="green")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run.settle_pending()
    with engine.connect() as conn:
        entries_before = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
    run.rollback(m)
    with engine.connect() as conn:
        entries_after = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
        audit = conn.execute(text(
            "SELECT kind, amount, balance_before, balance_after FROM wallet_audit "
            "WHERE user_id = :u ORDER BY id"), {"u": users[0]}).all()
        reversed_ids = conn.execute(text(
            "SELECT count(*) FROM ledger_transactions r JOIN market_distribution_transactions t "
            "ON t.reversal_id = r.id AND r.reverses_id = t.transaction_id")).scalar_one()
    assert entries_after > entries_before  # reversals added, nothing deleted
    assert reversed_ids >= 2
    kinds = [a.kind for a in audit]
    assert kinds == ["deposit", "wager", "payout", "reversal"]
    assert audit[-1].amount == -audit[-2].amount == -9_300
    assert audit[-1].balance_before == audit[-2].balance_after  # the trail is continuous
    assert audit[-1].balance_after == 1_000_000 - 4_000


def test_after_a_rollback_the_market_is_closed_and_resolvable_again(engine, run):
    u = uid("u")
    fund(run, [u])
    m = open_market(run)
    commit(run, m, u, 1_000, option_id="red")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run.settle_pending()
    run.rollback(m)
    assert show(engine, m)["status"] == "closed"
    with pytest.raises(Refused, match="is closed"):
        commit(run, m, u, 1_000, option_id="red")
    run("resolve_market", market_id=m, winning_option_id="green", resolved_by="ops")
    [done] = run.settle_pending()
    assert done.terms.kind == "refunded"
    assert balances(engine, [f"user:{u}:NGN"])[f"user:{u}:NGN"] == 1_000_000


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "c"]),
                       st.integers(1, 50_000)), min_size=1, max_size=14),
    st.sampled_from(["a", "b", "c", None]),
    st.sampled_from(["a", "b", "c", None]),
    st.integers(100, 500),
    st.integers(0, 2_000),
    st.integers(1, 5),
)
def test_rollback_restores_every_balance_and_resolving_again_ends_like_a_single_resolve(
        engine, placed, first, second, creator_bps, house_bps, batch):
    run = Run(engine, batch=batch)
    users = [uid("u") for _ in range(5)]
    fund(run, users)
    m = open_market(run, options=("a", "b", "c"), creator_fee_bps=creator_bps,
                    house_fee_bps=house_bps)
    ids = [commit(run, m, users[u], amount, option_id=o) for u, o, amount in placed]
    codes = [f"user:{u}:NGN" for u in users] + ["house:NGN", "creator:creator1:NGN",
                                                  f"escrow:market:{m}"]

    def resolve(winner):
        if winner is None:
            run("void_market", market_id=m, reason="void", resolved_by="ops")
        else:
            run("resolve_market", market_id=m, winning_option_id=winner, resolved_by="ops")
        run.settle_pending()

    committed = balances(engine, codes)
    resolve(first)
    run.rollback(m)
    assert balances(engine, codes) == committed  # every balance restored
    resolve(second)

    expected = distribute([Commitment(c, users[u], o, a) for c, (u, o, a) in zip(ids, placed)],
                          Outcome(second), house_bps, creator_bps)
    final = balances(engine, codes)
    for u in users:
        code = f"user:{u}:NGN"
        assert final[code] - committed[code] == expected.payouts_by_user().get(u, 0)
    assert final["house:NGN"] - committed["house:NGN"] == expected.terms.house_fee + expected.breakage
    assert final["creator:creator1:NGN"] - committed["creator:creator1:NGN"] == expected.terms.creator_fee
    assert final[f"escrow:market:{m}"] == 0
    doc = show(engine, m)
    assert doc["distribution"]["status"] == "completed"
    assert sorted((ln["commitment_id"], ln["payout"]) for ln in doc["distribution"]["lines"]) == \
        sorted((ln.commitment.commitment_id, ln.payout) for ln in expected.lines)
    ledger_ok(engine)


# --- refusals change nothing -----------------------------------------------------------------

def _state(engine, m, user):
    return balances(engine, [f"user:{user}:NGN", f"escrow:market:{m}"]), show(engine, m)


@pytest.mark.parametrize("choice, error, reason", [
    ({"option_id": "no-opt", "position": "yes"}, Refused, "contradicts position 'yes'"),
    ({"option_id": "perhaps"}, Refused, "no option 'perhaps'"),
    ({}, InvalidCommand, "option_id, a position, or both"),
])
def test_a_bad_commitment_is_refused_and_changes_nothing(engine, run, choice, error, reason):
    u = uid("u")
    fund(run, [u])
    m = open_market(run, kind="binary", options=("yes-opt", "no-opt"))
    before = _state(engine, m, u)
    with pytest.raises(error, match=reason):
        commit(run, m, u, 1_000, **choice)
    assert _state(engine, m, u) == before


def test_a_commitment_on_a_settled_market_is_refused(engine, run):
    u = uid("u")
    fund(run, [u])
    m = open_market(run)
    commit(run, m, u, 1_000, option_id="red")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    with pytest.raises(Refused, match="is settling"):
        commit(run, m, u, 1_000, option_id="red")
    run.settle_pending()
    before = _state(engine, m, u)
    with pytest.raises(Refused, match="is settled"):
        commit(run, m, u, 1_000, option_id="red")
    assert _state(engine, m, u) == before


def test_unknown_market_and_unknown_winner_are_refused(engine, run):
    with pytest.raises(NotFound, match="does not exist"):
        run("resolve_market", market_id=uid("nope"), winning_option_id="a", resolved_by="ops")
    m = open_market(run)
    with pytest.raises(Refused, match="no option 'purple'"):
        run("resolve_market", market_id=m, winning_option_id="purple", resolved_by="ops")
    assert show(engine, m)["status"] == "open"


def test_a_creator_fee_outside_the_range_is_refused_and_no_market_exists(engine, run):
    with pytest.raises(Refused, match="creator fee 600 bps"):
        open_market(run, creator_fee_bps=600)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM markets WHERE creator_fee_bps = 600")).scalar_one() == 0


def test_reopening_a_market_with_another_definition_is_refused_and_a_resend_is_harmless(engine, run):
    m = uid("m")
    kw = dict(market_id=m, title="t", kind="multi", currency="NGN", creator_id="c",
              creator_fee_bps=100, options=[{"option_id": "x", "label": "X"}, {"option_id": "y", "label": "Y"}])
    run("open_market", **kw)
    run("open_market", **kw)  # another request id, same definition: nothing happens
    with pytest.raises(Refused, match="other terms: creator_fee_bps is 100, not 300"):
        run("open_market", **{**kw, "creator_fee_bps": 300})


def test_a_commitment_id_reused_with_other_terms_is_refused(engine, run):
    u = uid("u")
    fund(run, [u])
    m = open_market(run)
    cid = uid("c")
    run("place_commitment", commitment_id=cid, market_id=m, user_id=u, amount=500, option_id="red")
    run("place_commitment", commitment_id=cid, market_id=m, user_id=u, amount=500, option_id="red")
    with pytest.raises(Refused, match="other terms"):
        run("place_commitment", commitment_id=cid, market_id=m, user_id=u, amount=900, option_id="red")
    assert show(engine, m)["pool"] == 500


def test_rolling_back_a_market_never_resolved_is_refused(engine, run):
    m = open_market(run)
    with pytest.raises(Refused, match="never resolved"):
        run.rollback(m)


def test_a_commitment_is_a_wager_and_the_guard_refuses_one_beyond_the_balance(engine, run):
    u = uid("u")
    m = open_market(run)
    with pytest.raises(Refused):
        commit(run, m, u, 100_000_000_000, option_id="red")  # far beyond any credit line
    assert show(engine, m)["pool"] == 0


def test_escrow_that_does_not_hold_the_pool_fails_the_settlement_and_pays_nobody(engine, run):
    users = [uid("u") for _ in range(2)]
    fund(run, users)
    m = open_market(run)
    commit(run, m, users[0], 1_000, option_id="red")
    commit(run, m, users[1], 1_000, option_id="green")
    with engine.begin() as conn:  # someone moved money out of the escrow behind our back
        from domain.ledger import Posting
        ledger.post(conn, [Posting(f"escrow:market:{m}", "NGN", -1), Posting("world:NGN", "NGN", 1)],
                    kind="test")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    from domain.errors import LedgerError
    before = balances(engine, [f"user:{u}:NGN" for u in users])
    with pytest.raises(LedgerError, match="holds 1999, expected 2000"):
        run.settle_pending()
    assert balances(engine, [f"user:{u}:NGN" for u in users]) == before


def test_notifications_of_a_large_market_are_written_set_based_and_left_to_the_sweeper(
        engine, run, monkeypatch):
    monkeypatch.setattr(outbox, "PUBLISH_INLINE_MAX", 2)
    users = [uid("u") for _ in range(3)]
    fund(run, users)
    m = open_market(run)
    for u in users:
        commit(run, m, u, 1_000, option_id="red")
    published = publisher_for(STUB).published_events
    seen = len(published)
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run.settle_pending()
    mine = [e for e in published[seen:] if e["data"].get("market_id") == m]
    assert [e["event"] for e in mine] == ["market.settled"]  # published right after commit
    with engine.connect() as conn:
        waiting = conn.execute(text(
            "SELECT recipient FROM outbox WHERE event_name = 'market.payout' "
            "AND published_at IS NULL AND body->'data'->>'market_id' = :m"), {"m": m}).scalars().all()
    assert sorted(waiting) == sorted(users)


def test_a_market_nobody_committed_to_resolves_with_nothing_to_pay(engine, run):
    m = open_market(run)
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    [done] = run.settle_pending()
    assert (done.terms.pool, done.paid, done.transactions) == (0, 0, [])
    doc = show(engine, m)
    assert (doc["status"], doc["pool"], doc["distribution"]["lines"]) == ("settled", 0, [])


def test_a_rollback_the_house_can_no_longer_pay_is_refused_and_changes_nothing(engine, run):
    from domain.errors import InsufficientFunds
    from domain.ledger import Posting

    users = [uid("u") for _ in range(2)]
    fund(run, users, currency="USD")
    m = open_market(run, currency="USD")
    commit(run, m, users[0], 1_000, option_id="red")
    commit(run, m, users[1], 1_000, option_id="green")
    run("resolve_market", market_id=m, winning_option_id="red", resolved_by="ops")
    run.settle_pending()
    with engine.begin() as conn:  # the house spent its money
        house = ledger.balance(conn, "house:USD").balance
        ledger.post(conn, [Posting("house:USD", "USD", -house), Posting("world:USD", "USD", house)],
                    kind="test")
    codes = [f"user:{u}:USD" for u in users] + ["house:USD", f"escrow:market:{m}"]
    before = balances(engine, codes), show(engine, m)
    with pytest.raises(InsufficientFunds, match="house:USD would go negative"):
        run.rollback(m)
    assert (balances(engine, codes), show(engine, m)) == before
