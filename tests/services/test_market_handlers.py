"""The market handlers on the fake unit of work (SPEC §2): no database, no broker."""

from __future__ import annotations

import inspect
from collections import Counter
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import LedgerError, Refused
from domain.ledger import Posting
from domain.markets import Commitment, Outcome, distribute
from infra.contract import parse
from infra.contract.markets import (
    OpenMarket,
    PlaceCommitment,
    ResolveMarket,
    RetryMarketSettlement,
    RollbackMarket,
    SettleMarket,
    VoidMarket,
)
from infra.markets.repository import MarketRepository
from infra.uow_fake import FakeMarkets, FakeUnitOfWork
from services import markets

CUR = "NGN"
OPTIONS = ("red", "green", "blue")
_ids = count(1)


def _run(uow: FakeUnitOfWork, handler, schema, **fields):
    cmd = parse(schema, {"request_id": f"r{next(_ids)}", **fields})
    with uow:
        result = handler(cmd, uow)
        uow.commit()
    return result


def _settle_handed_on(uow: FakeUnitOfWork) -> list:
    """Run every ``settle_market`` sent so far, as the settlement step would."""
    done = []
    for actor, _, kwargs in [s for s in uow.sent if s[0] == "settle_market"]:
        uow.sent.remove((actor, 0, kwargs))
        done.append(_step(uow, parse(SettleMarket, kwargs)))
    return done


def _step(uow: FakeUnitOfWork, cmd: SettleMarket):
    uow.actor, uow.request_id, uow.payload = "settle_market", cmd.request_id, cmd
    return markets.settle_market(cmd, uow)


def _market(uow: FakeUnitOfWork, *, house_fee_bps: int = 500, creator_fee_bps: int = 200) -> str:
    m = f"m{next(_ids)}"
    _run(uow, markets.open_market, OpenMarket, market_id=m, title="derby", kind="multi",
         options=[{"option_id": o, "label": o.title()} for o in OPTIONS], currency=CUR,
         creator_id="cr", creator_fee_bps=creator_fee_bps, house_fee_bps=house_fee_bps)
    return m


def _commit(uow: FakeUnitOfWork, m: str, user: str, amount: int, option: str) -> str:
    uow.ledger.post([Posting(f"user:{user}:{CUR}", CUR, amount), Posting(f"world:{CUR}", CUR, -amount)],
                    kind="deposit")
    c = f"c{next(_ids)}"
    _run(uow, markets.place_commitment, PlaceCommitment, commitment_id=c, market_id=m,
         user_id=user, amount=amount, option_id=option)
    return c


def _wallet(uow: FakeUnitOfWork, user: str) -> int:
    return uow.ledger.balance.get(f"user:{user}:{CUR}", 0)


def _balanced(uow: FakeUnitOfWork) -> None:
    assert sum(uow.ledger.balance.values()) == 0  # one currency: every posting balanced


wagers = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.sampled_from(OPTIONS),
                            st.integers(1, 10**9)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(wagers=wagers, winner=st.sampled_from(OPTIONS), house=st.integers(0, 1000),
       creator=st.integers(100, 500), batch=st.integers(1, 5))
def test_resolving_pays_each_winner_its_floor_share_and_the_breakage_goes_to_the_house(
        wagers, winner, house, creator, batch):
    uow = FakeUnitOfWork()
    m = _market(uow, house_fee_bps=house, creator_fee_bps=creator)
    ids = [_commit(uow, m, u, a, o) for u, o, a in wagers]
    expected = distribute([Commitment(c, u, o, a) for c, (u, o, a) in zip(ids, wagers)],
                          Outcome.winner(winner), house, creator)
    _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id=winner,
         resolved_by="ops")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(markets, "BATCH", batch)  # one ledger transaction per batch that pays
        (done,) = _settle_handed_on(uow)

    payouts = expected.payouts_by_user()
    for user in {u for u, _, _ in wagers}:
        assert _wallet(uow, user) == payouts.get(user, 0)
    t = expected.terms
    assert (done.paid, done.breakage) == (expected.paid, expected.breakage)
    assert uow.ledger.balance.get(f"house:{CUR}", 0) == t.house_fee + expected.breakage
    assert uow.ledger.balance.get(f"creator:cr:{CUR}", 0) == t.creator_fee
    assert uow.ledger.balance[f"escrow:market:{m}"] == 0
    assert done.paid + t.house_fee + t.creator_fee + done.breakage == t.pool
    _balanced(uow)
    expected_status = "voided" if t.kind == "void" else "settled"
    assert uow.markets.get(m).status == expected_status
    settled = [e for e in uow.events if e[0] == "market.settled"]
    assert [e[1]["pool"] for e in settled] == [t.pool]


def test_nobody_on_the_winning_option_refunds_everyone_in_full_without_fees():
    uow = FakeUnitOfWork()
    m = _market(uow)
    _commit(uow, m, "a", 1_000, "red")
    _commit(uow, m, "b", 3_000, "green")
    _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id="blue",
         resolved_by="ops")
    (done,) = _settle_handed_on(uow)
    assert done.terms.kind == "refunded"
    assert (_wallet(uow, "a"), _wallet(uow, "b")) == (1_000, 3_000)
    assert f"house:{CUR}" not in uow.ledger.balance


def test_voiding_refunds_every_commitment_in_full_no_fees():
    uow = FakeUnitOfWork()
    m = _market(uow)
    _commit(uow, m, "a", 1_000, "red")
    _commit(uow, m, "a", 2_500, "blue")
    _commit(uow, m, "b", 3_000, "green")
    _run(uow, markets.void_market, VoidMarket, market_id=m, reason="called off", resolved_by="ops")
    (done,) = _settle_handed_on(uow)
    assert done.terms.kind == "void" and done.breakage == 0
    assert (_wallet(uow, "a"), _wallet(uow, "b")) == (3_500, 3_000)
    assert uow.ledger.balance[f"escrow:market:{m}"] == 0
    assert f"house:{CUR}" not in uow.ledger.balance and f"creator:cr:{CUR}" not in uow.ledger.balance
    assert uow.markets.get(m).status == "voided"
    payouts = {e[2]: e[1] for e in uow.events if e[0] == "market.payout"}
    assert (payouts["a"]["result"], payouts["a"]["payout"], payouts["a"]["commitments"]) == \
        ("refunded", 3_500, 2)
    _balanced(uow)


def test_the_settlement_step_run_again_pays_nothing_more():
    uow = FakeUnitOfWork()
    m = _market(uow)
    _commit(uow, m, "a", 1_000, "red")
    _commit(uow, m, "b", 3_000, "green")
    _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id="red",
         resolved_by="ops")
    (_, _, handoff), = [s for s in uow.sent if s[0] == "settle_market"]
    cmd = parse(SettleMarket, handoff)
    assert _step(uow, cmd) is not None
    after = dict(uow.ledger.balance)
    assert _step(uow, cmd) is None  # a redelivery: the claim is taken
    again = parse(SettleMarket, {**handoff, "request_id": "another"})
    assert _step(uow, again) is None  # another request: the distribution is no longer pending
    assert uow.ledger.balance == after
    assert Counter(e[0] for e in uow.events)["market.settled"] == 1


def test_resolving_twice_hands_one_settlement_on():
    uow = FakeUnitOfWork()
    m = _market(uow)
    _commit(uow, m, "a", 1_000, "red")
    for _ in range(2):
        _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id="red",
             resolved_by="ops")
    assert len(_settle_handed_on(uow)) == 1


def test_a_rollback_reverses_the_distribution_and_the_market_can_be_resolved_again():
    uow = FakeUnitOfWork()
    m = _market(uow)
    _commit(uow, m, "a", 1_000, "red")
    _commit(uow, m, "b", 3_000, "green")
    staked = dict(uow.ledger.balance)
    _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id="red",
         resolved_by="ops")
    _settle_handed_on(uow)
    done = _run(uow, markets.rollback_market, RollbackMarket, market_id=m, reason="wrong result",
                requested_by="ops")
    assert len(done.reversals) == 2  # the payouts and the fees
    assert {k: v for k, v in uow.ledger.balance.items() if v or k in staked} == staked
    assert uow.markets.get(m).status == "closed"
    assert _run(uow, markets.rollback_market, RollbackMarket, market_id=m, reason="again",
                requested_by="ops") is None
    _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id="green",
         resolved_by="ops")
    _settle_handed_on(uow)
    assert _wallet(uow, "b") == 4_000 - 4_000 * 7 // 100
    _balanced(uow)


def test_a_settlement_that_fails_for_good_is_failed_alerted_and_its_retry_pays_once():
    uow = FakeUnitOfWork()
    m = _market(uow)
    _commit(uow, m, "a", 1_000, "red")
    _run(uow, markets.resolve_market, ResolveMarket, market_id=m, winning_option_id="red",
         resolved_by="ops")
    uow.ledger.balance[f"escrow:market:{m}"] -= 1  # the books disagree with the commitments
    with pytest.raises(LedgerError, match="holds 999, expected 1000"):
        _settle_handed_on(uow)
    dist = uow.markets.latest_distribution(m)
    assert (uow.markets.get(m).status, dist.status) == ("closed", "failed")
    assert markets.failure_alert_key(dist.id) in uow.alerts.open
    assert _wallet(uow, "a") == 0

    uow.ledger.balance[f"escrow:market:{m}"] += 1
    assert _run(uow, markets.retry_market_settlement, RetryMarketSettlement, market_id=m,
                retried_by="ops") == dist.id
    with pytest.raises(Refused, match="only a failed settlement is retried"):
        _run(uow, markets.retry_market_settlement, RetryMarketSettlement, market_id=m,
             retried_by="ops")
    (done,) = _settle_handed_on(uow)
    assert done.distribution_id == dist.id and uow.markets.get(m).status == "settled"
    assert markets.failure_alert_key(dist.id) not in uow.alerts.open
    _balanced(uow)


def test_a_commitment_resent_with_other_terms_is_refused_and_moves_nothing():
    uow = FakeUnitOfWork()
    m = _market(uow)
    c = _commit(uow, m, "a", 1_000, "red")
    _run(uow, markets.place_commitment, PlaceCommitment, commitment_id=c, market_id=m,
         user_id="a", amount=1_000, option_id="red")  # a resend: nothing
    with pytest.raises(Refused, match="other terms"):
        _run(uow, markets.place_commitment, PlaceCommitment, commitment_id=c, market_id=m,
             user_id="a", amount=2_000, option_id="red")
    assert uow.ledger.balance[f"escrow:market:{m}"] == 1_000


def test_the_fake_markets_repository_has_the_real_ones_interface():
    for name, method in inspect.getmembers(MarketRepository, inspect.isfunction):
        if name.startswith("_"):
            continue
        fake = getattr(FakeMarkets, name, None)
        assert fake is not None, f"FakeMarkets lacks {name}"
        assert list(inspect.signature(fake).parameters) == \
            list(inspect.signature(method).parameters), name
