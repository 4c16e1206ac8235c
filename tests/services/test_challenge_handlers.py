"""The treasury-balancing handlers (services/challenges.py) on the fake unit of work: no
database, no broker.  A command runs as its actor would (one transaction, committed); the
steps it hands on run after it, in order, as the workers would take them."""

from __future__ import annotations

from typing import Any

import pytest

from domain.challenges import (
    budget_alert_key,
    personas_alert_key,
    settlement_failed_alert_key,
    underfunded_alert_key,
)
from domain.errors import LedgerError, Refused
from domain.ledger import Posting
from infra.challenges.repository import Persona
from infra.contract import parse, spec_for
from infra.uow_fake import FakeUnitOfWork
from services import challenges

STAKE = 1_000
TRANSACTIONAL_FALSE = ("settle_challenge",)


def run(uow: FakeUnitOfWork, actor: str, **kwargs: Any) -> None:
    """One command (its own transaction), then every step it hands on."""
    _one(uow, actor, kwargs)
    while uow.sent:
        name, _, step = uow.sent.pop(0)
        _one(uow, name, step)


def _one(uow: FakeUnitOfWork, actor: str, kwargs: dict[str, Any]) -> None:
    """As ``infra.messaging.command`` runs it: validated, claimed, committed."""
    cmd = parse(spec_for(actor).schema, {"request_id": f"r-{actor}-{len(uow.claims)}", **kwargs})
    uow.actor, uow.request_id, uow.payload = actor, cmd.request_id, cmd
    handler = getattr(challenges, actor)
    if actor in TRANSACTIONAL_FALSE:
        handler(cmd, uow)
        return
    with uow:
        if uow.claim():
            handler(cmd, uow)
        uow.commit()


def fund(uow: FakeUnitOfWork, code: str, amount: int) -> None:
    with uow:
        uow.ledger.post([Posting("world:NGN", "NGN", -amount), Posting(code, "NGN", amount)],
                        kind="deposit")
        uow.commit()


def challenge(uow: FakeUnitOfWork, *, personas: int = 49, treasury: int = 100 * STAKE,
              max_risk: int | None = 10 * STAKE, cid: str = "c1") -> str:
    uow.challenges.personas = [Persona(i, f"p{i:02d}", f"Persona {i}", "casual")
                               for i in range(1, personas + 1)]
    fund(uow, "treasury:NGN", treasury)
    run(uow, "open_challenge", challenge_id=cid, title="Derby", currency="NGN", stake=STAKE,
        admin_created=True)
    if max_risk is not None:
        run(uow, "configure_treasury", challenge_id=cid, max_risk=max_risk, notes="",
            admin_id="adm")
    return cid


def join(uow: FakeUnitOfWork, cid: str, user: str, side: str) -> None:
    fund(uow, f"user:{user}:NGN", STAKE)
    run(uow, "join_challenge", challenge_id=cid, user_id=user, side=side)


def events(uow: FakeUnitOfWork, name: str) -> list[dict[str, Any]]:
    return [data for event, data, _ in uow.events if event == name]


def balanced(uow: FakeUnitOfWork) -> bool:
    return sum(uow.ledger.balance.values()) == 0


def test_opposite_sides_pair_first_come_and_the_heavy_side_waits():
    uow = FakeUnitOfWork()
    cid = challenge(uow)
    for user, side in (("y1", "YES"), ("y2", "YES"), ("n1", "NO")):
        join(uow, cid, user, side)
    assert uow.challenges.waiting_counts(cid) == {"YES": 1, "NO": 0}
    assert sorted(e["user_id"] for e in events(uow, "match.found")) == ["n1", "y1"]
    assert uow.ledger.balance[f"escrow:challenge:{cid}"] == 3 * STAKE


def test_a_fill_is_bounded_by_the_budget_and_says_so():
    uow = FakeUnitOfWork()
    cid = challenge(uow, max_risk=2 * STAKE + STAKE // 2)
    for i in range(5):
        join(uow, cid, f"y{i}", "YES")
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=5, admin_id="adm")
    cfg = uow.challenges.config(cid)
    assert (cfg.allocated, cfg.reserved, cfg.filled_count) == (2 * STAKE, 0, 2)
    assert uow.ledger.balance["treasury:NGN"] == 98 * STAKE
    [short] = events(uow, "admin.treasury.fill_shortfall")
    assert (short["assigned"], short["shortfall"], short["reasons"]) == (2, 3, ["budget"])
    assert budget_alert_key(cid) in uow.alerts.open
    # The earliest waiting users were matched; the rest still wait.
    assert [w.user_id for w in uow.challenges.waiting(cid, "YES", 10)] == ["y2", "y3", "y4"]
    assert balanced(uow)


def test_a_budget_of_exactly_one_stake_funds_one_match():
    uow = FakeUnitOfWork()
    cid = challenge(uow, max_risk=STAKE)
    join(uow, cid, "y1", "YES")
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    assert uow.challenges.config(cid).allocated == STAKE
    assert events(uow, "admin.treasury.fill_shortfall") == []
    assert budget_alert_key(cid) in uow.alerts.open  # used up: nothing more can be funded


def test_a_fill_is_bounded_by_the_personas_and_never_reuses_one():
    uow = FakeUnitOfWork()
    cid = challenge(uow, personas=3)
    for i in range(5):
        join(uow, cid, f"y{i}", "YES")
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    used = [m["persona_id"] for m in uow.challenges.matches.values()]
    assert len(used) == len(set(used)) == 3
    [short] = events(uow, "admin.treasury.fill_shortfall")
    assert short["reasons"] == ["personas_exhausted"]
    assert personas_alert_key(cid) in uow.alerts.open
    with pytest.raises(Refused, match="budget exhausted"):  # a fill the budget cannot start
        uow2 = FakeUnitOfWork()
        cid2 = challenge(uow2, max_risk=STAKE - 1, cid="c2")
        run(uow2, "fill_treasury", challenge_id=cid2, side="YES", match_count=1, admin_id="adm")


@pytest.mark.parametrize("result", ["YES", "NO"])
def test_settlement_pays_the_winners_and_the_escrow_ends_at_zero(result, monkeypatch):
    monkeypatch.setattr(challenges, "SETTLE_BATCH", 2)  # several batches
    uow = FakeUnitOfWork()
    cid = challenge(uow)
    for user, side in (("y1", "YES"), ("n1", "NO"), ("y2", "YES"), ("y3", "YES"), ("y4", "YES")):
        join(uow, cid, user, side)
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=2, admin_id="adm")
    run(uow, "resolve_challenge", challenge_id=cid, result=result, resolved_by="adm")
    won = result == "YES"
    balance = {u: uow.ledger.balance.get(f"user:{u}:NGN", 0) for u in ("y1", "n1", "y2", "y3", "y4")}
    assert balance == {"y1": 2 * STAKE if won else 0, "n1": 0 if won else 2 * STAKE,
                       "y2": 2 * STAKE if won else 0, "y3": 2 * STAKE if won else 0,
                       "y4": STAKE}  # unpaired: refunded
    assert uow.ledger.balance[f"escrow:challenge:{cid}"] == 0
    assert uow.ledger.balance["treasury:NGN"] == (98 if won else 102) * STAKE
    assert uow.challenges.get(cid).status == "settled"
    [report] = events(uow, "admin.treasury.settlement")
    assert (report["won"], report["lost"], report["net_pnl"]) == (
        (0, 2, -2 * STAKE) if won else (2, 0, 2 * STAKE))
    assert len(events(uow, "challenge.settled")) == 5
    assert balanced(uow)


def test_a_void_result_refunds_everyone_the_treasury_included():
    uow = FakeUnitOfWork()
    cid = challenge(uow)
    for user, side in (("y1", "YES"), ("n1", "NO"), ("y2", "YES")):
        join(uow, cid, user, side)
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    run(uow, "resolve_challenge", challenge_id=cid, result="VOID", resolved_by="adm")
    assert [uow.ledger.balance[f"user:{u}:NGN"] for u in ("y1", "n1", "y2")] == [STAKE] * 3
    assert uow.ledger.balance["treasury:NGN"] == 100 * STAKE
    [report] = events(uow, "admin.treasury.settlement")
    assert (report["refunded"], report["net_pnl"]) == (1, 0)
    assert {m["status"] for m in uow.challenges.matches.values()} == {"refunded"}
    assert balanced(uow)


def test_resolving_cancels_a_fill_in_progress_and_gives_its_budget_back():
    uow = FakeUnitOfWork()
    cid = challenge(uow)
    join(uow, cid, "y1", "YES")
    _one(uow, "fill_treasury", {"challenge_id": cid, "side": "YES", "match_count": 1,
                                "admin_id": "adm"})
    _one(uow, *_next(uow))  # assign_personas: the stake is reserved
    assert uow.challenges.config(cid).reserved == STAKE
    match_step = _next(uow)
    run(uow, "resolve_challenge", challenge_id=cid, result="YES", resolved_by="adm")
    _one(uow, *match_step)  # create_treasury_matches, after the resolution: nothing
    cfg = uow.challenges.config(cid)
    assert (cfg.reserved, cfg.allocated) == (0, 0)
    assert [f["status"] for f in uow.challenges.fills.values()] == ["cancelled"]
    assert uow.ledger.balance["treasury:NGN"] == 100 * STAKE
    assert uow.ledger.balance["user:y1:NGN"] == STAKE  # unpaired: refunded
    assert balanced(uow)


def test_a_treasury_that_cannot_pay_creates_nothing_and_alerts():
    uow = FakeUnitOfWork()
    cid = challenge(uow, treasury=STAKE // 2)
    join(uow, cid, "y1", "YES")
    run(uow, "fill_treasury", challenge_id=cid, side="YES", match_count=1, admin_id="adm")
    assert [f["status"] for f in uow.challenges.fills.values()] == ["failed"]
    assert uow.challenges.matches == {} and uow.challenges.config(cid).reserved == 0
    assert underfunded_alert_key("NGN") in uow.alerts.open
    assert events(uow, "match.found") == [] and len(events(uow, "admin.treasury.fill_failed")) == 1
    assert [w.user_id for w in uow.challenges.waiting(cid, "YES", 5)] == ["y1"]


def test_a_step_run_again_changes_nothing():
    uow = FakeUnitOfWork()
    cid = challenge(uow)
    join(uow, cid, "y1", "YES")
    _one(uow, "fill_treasury", {"challenge_id": cid, "side": "YES", "match_count": 1,
                                "admin_id": "adm"})
    name, assign = _next(uow)
    _one(uow, name, assign)
    _one(uow, name, assign)  # redelivered: claimed already
    _one(uow, name, {**assign, "request_id": "again"})  # asked again: no longer requested
    create = _next(uow)
    assert uow.sent == []  # neither handed anything on
    _one(uow, *create)
    before = (dict(uow.ledger.balance), len(uow.events), uow.challenges.config(cid))
    _one(uow, *create)
    _one(uow, create[0], {**create[1], "request_id": "again"})  # no longer assigned
    assert (dict(uow.ledger.balance), len(uow.events), uow.challenges.config(cid)) == before
    run(uow, "resolve_challenge", challenge_id=cid, result="NO", resolved_by="adm")
    settled = (dict(uow.ledger.balance), len(uow.events))
    _one(uow, "settle_challenge", {"challenge_id": cid})  # a settled challenge: nothing
    assert (dict(uow.ledger.balance), len(uow.events)) == settled
    assert uow.ledger.balance["treasury:NGN"] == 101 * STAKE
    assert balanced(uow)


def _next(uow: FakeUnitOfWork) -> tuple[str, dict[str, Any]]:
    name, _, kwargs = uow.sent.pop(0)
    return name, kwargs


def test_a_settlement_failing_for_good_is_recorded_and_its_retry_pays_nobody_twice(monkeypatch):
    monkeypatch.setattr(challenges, "SETTLE_BATCH", 2)
    uow = FakeUnitOfWork()
    cid = challenge(uow)
    users = [("y1", "YES"), ("n1", "NO"), ("y2", "YES"), ("y3", "YES")]
    for user, side in users:
        join(uow, cid, user, side)
    # Patched on the class: a rollback restores the repository's state as a copy.
    settle_seats = type(uow.challenges).settle_seats
    calls = []

    def second_batch_fails(self, seats, *args):
        calls.append(len(seats))
        if len(calls) == 2:
            raise LedgerError("injected")
        settle_seats(self, seats, *args)

    monkeypatch.setattr(type(uow.challenges), "settle_seats", second_batch_fails)
    with pytest.raises(LedgerError, match="injected"):
        run(uow, "resolve_challenge", challenge_id=cid, result="YES", resolved_by="adm")
    assert uow.challenges.get(cid).status == "settlement_failed"
    assert settlement_failed_alert_key(cid) in uow.alerts.open
    assert len(events(uow, "admin.treasury.settlement_failed")) == 1
    assert uow.ledger.balance.get("user:y1:NGN", 0) == 0  # one transaction: the first batch too rolled back
    uow.sent.clear()  # the dead letter stays; the operator retries

    monkeypatch.setattr(type(uow.challenges), "settle_seats", settle_seats)
    run(uow, "retry_challenge_settlement", challenge_id=cid, retried_by="ops-ada")
    with pytest.raises(Refused, match="only a settlement_failed"):
        run(uow, "retry_challenge_settlement", challenge_id=cid, retried_by="ops-ada")
    assert uow.challenges.get(cid).status == "settled"
    assert [uow.ledger.balance[f"user:{u}:NGN"] for u, _ in users] == [2 * STAKE, 0, STAKE, STAKE]
    assert uow.ledger.balance[f"escrow:challenge:{cid}"] == 0
    assert settlement_failed_alert_key(cid) not in uow.alerts.open
    assert balanced(uow)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from infra.contract.challenges import JoinChallenge  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["YES", "NO"]), max_size=4),
       st.lists(st.sampled_from(["YES", "NO"]), min_size=1, max_size=8),
       st.none() | st.integers(1, 10))
def test_a_join_group_does_what_its_joins_do_one_after_the_other(earlier, sides, cap):
    """``join_group`` (a group commit) against the same joins one by one: the same seats,
    pairs, balances and events — or, when any of them is refused alone, a refusal."""
    def setup() -> FakeUnitOfWork:
        uow = FakeUnitOfWork()
        run(uow, "open_challenge", challenge_id="c1", title="Derby", currency="NGN",
            stake=STAKE, admin_created=True, max_participants=cap)
        for n, side in enumerate(earlier):
            try:
                join(uow, "c1", f"e{n}", side)
            except Refused:
                pass
        for n in range(len(sides)):
            fund(uow, f"user:g{n}:NGN", STAKE)
        return uow

    cmds = [parse(JoinChallenge, {"request_id": f"j{n}", "challenge_id": "c1",
                                  "user_id": f"g{n}", "side": side})
            for n, side in enumerate(sides)]
    alone, grouped = setup(), setup()
    refused = False
    for cmd in cmds:
        try:
            with alone:
                challenges.join_challenge(cmd, alone)
                alone.commit()
        except Refused:
            refused = True
    if refused:
        with pytest.raises(Refused), grouped:
            challenges.join_group(grouped, cmds)
        return
    with grouped:
        challenges.join_group(grouped, cmds)
        grouped.commit()
    seats = lambda uow: sorted((p["user_id"], p["side"], p["paired_with"] is not None)  # noqa: E731
                               for p in uow.challenges.participants.values())
    pairs = lambda uow: sorted(tuple(sorted((uow.challenges.participants[p["paired_with"]]["user_id"],  # noqa: E731
                                             p["user_id"])))
                               for p in uow.challenges.participants.values() if p["paired_with"])
    assert seats(grouped) == seats(alone)
    assert pairs(grouped) == pairs(alone)
    assert grouped.ledger.balance == alone.ledger.balance
    assert sorted(e[0] for e in grouped.events) == sorted(e[0] for e in alone.events)
