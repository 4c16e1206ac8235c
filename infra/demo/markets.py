"""Demo chapter: a multi-option market resolved, rolled back and resolved again."""

from __future__ import annotations

from sqlalchemy import text

from domain.money import format_minor
from infra import ledger, rabbit
from infra.demo.context import DemoContext


def _balance(ctx: DemoContext, code: str) -> int:
    with ctx.engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def _status(ctx: DemoContext, market_id: str) -> str | None:
    with ctx.engine.connect() as conn:
        return conn.execute(text("SELECT status FROM markets WHERE market_id = :m"),
                            {"m": market_id}).scalar_one_or_none()


def run(ctx: DemoContext) -> None:
    ctx.chapter("markets", "Markets: a multi-option market resolved, disputed, rolled back, "
                           "resolved again, disputed and confirmed")
    m = ctx.id("derby")
    names = ("ada", "ben", "chi", "dee")
    users = {n: ctx.id(n) for n in names}
    for u in users.values():
        ctx.send("deposit", request_id=ctx.id(f"mkt-dep-{u}"), user_id=u, currency="NGN",
                 amount=1_000_000, reference="bank transfer")
    ctx.send("open_market", request_id=ctx.id("mkt-open"), market_id=m, title="Who wins the derby?",
             kind="multi", currency="NGN", creator_id=ctx.id("creator"), creator_fee_bps=200,
             options=[{"option_id": "thunder", "label": "Thunder"},
                      {"option_id": "comet", "label": "Comet"},
                      {"option_id": "blaze", "label": "Blaze"}])
    ctx.wait_until(lambda: _status(ctx, m) == "open"
                   and all(_balance(ctx, f"user:{u}:NGN") == 1_000_000 for u in users.values()),
                   "market and deposits")
    placed = [("ada", "thunder", 300_000), ("ben", "comet", 200_000), ("chi", "thunder", 100_001),
              ("dee", "blaze", 150_000), ("ada", "comet", 50_000)]
    for i, (who, option, amount) in enumerate(placed):
        ctx.send("place_commitment", request_id=ctx.id(f"mkt-c{i}"), commitment_id=ctx.id(f"c{i}"),
                 market_id=m, user_id=users[who], amount=amount, option_id=option)
    pool = sum(a for _, _, a in placed)
    ctx.wait_until(lambda: _balance(ctx, f"escrow:market:{m}") == pool, "commitments in escrow")
    ctx.say(f"4 users committed {format_minor(pool, 'NGN')} on 3 options "
            "(ada backed two options); the pool sits in the market escrow")

    bad = ctx.id("mkt-bad")
    ctx.send("place_commitment", request_id=bad, commitment_id=ctx.id("c-bad"), market_id=m,
             user_id=users["ben"], amount=1_000, option_id="thunder", position="yes")
    letter = ctx.wait_until(lambda: [d.summary() for d in rabbit.list_dead_letters("ballast.markets")
                                     if d.summary()["request_id"] == bad], "refused commitment")
    ctx.say(f"a position on a multi-option market was refused: {letter[0]['reason']}")

    ctx.send("resolve_market", request_id=ctx.id("mkt-resolve-1"), market_id=m,
             winning_option_id="comet", resolved_by="ops")
    ctx.wait_until(lambda: _status(ctx, m) == "settled", "first settlement")
    first = ctx.cli("market", "show", m)
    d = first["distribution"]
    ctx.say(f"resolved to Comet: {_fees(d)}; ben gets {_won(first, users['ben'])}, "
            f"ada {_won(first, users['ada'])}")
    ctx.show("market show (first resolution)", first)

    ctx.send("dispute_market", request_id=ctx.id("mkt-dispute-1"), market_id=m,
             reason="Thunder crossed the line first", disputed_by=users["chi"])
    ctx.wait_until(lambda: _status(ctx, m) == "disputed", "the dispute")
    twice = ctx.id("mkt-dispute-twice")
    ctx.send("dispute_market", request_id=twice, market_id=m, reason="me too",
             disputed_by=users["dee"])
    letter = ctx.wait_until(lambda: [d.summary() for d in rabbit.list_dead_letters("ballast.markets")
                                     if d.summary()["request_id"] == twice], "second dispute refused")
    ctx.say(f"chi disputes the result: the market is held disputed (no commitments, no other "
            f"resolution); a second dispute meanwhile is refused: {letter[0]['reason']}")

    ctx.send("rollback_market", request_id=ctx.id("mkt-rollback"), market_id=m,
             reason="the result was announced wrongly", requested_by="ops")
    ctx.wait_until(lambda: _status(ctx, m) == "closed", "rollback")
    back = {n: _balance(ctx, f"user:{u}:NGN") for n, u in users.items()}
    ctx.say("the dispute holds: rolled back by reversing transactions; balances are as right "
            "after the commitments", balances=back)

    ctx.send("resolve_market", request_id=ctx.id("mkt-resolve-2"), market_id=m,
             winning_option_id="thunder", resolved_by="ops")
    ctx.wait_until(lambda: _status(ctx, m) == "settled", "second settlement")
    second = ctx.cli("market", "show", m)
    d = second["distribution"]
    ctx.say(f"resolved again, to Thunder: ada gets {_won(second, users['ada'])}, chi "
            f"{_won(second, users['chi'])}; {_fees(d)}",
            balances={n: _balance(ctx, f"user:{u}:NGN") for n, u in users.items()})
    dispute = second["dispute"]
    ctx.say(f"the dispute records how it ended: {dispute['status']} by {dispute['ended_by']}, "
            f"then re-resolved as {dispute['reresolved_outcome']}")
    ctx.show("market show (after rollback and second resolution)", second)

    ctx.send("dispute_market", request_id=ctx.id("mkt-dispute-2"), market_id=m,
             reason="Comet was robbed", disputed_by=users["ben"])
    ctx.wait_until(lambda: _status(ctx, m) == "disputed", "the second dispute")
    ctx.send("confirm_market", request_id=ctx.id("mkt-confirm"), market_id=m,
             confirmed_by="ops", note="photo finish reviewed: Thunder")
    ctx.wait_until(lambda: _status(ctx, m) == "settled", "the confirmation")
    confirmed = ctx.cli("market", "show", m)
    ctx.say(f"ben disputes the new result; the operator confirms it (no money moves): dispute "
            f"{confirmed['dispute']['status']}, {confirmed['disputes']} dispute(s) on record")


def _won(doc: dict, user_id: str) -> str:
    return format_minor(sum(ln["payout"] for ln in doc["distribution"]["lines"]
                            if ln["user_id"] == user_id), "NGN")


def _fees(dist: dict) -> str:
    return (f"house fee {format_minor(dist['house_fee'], 'NGN')}, creator fee "
            f"{format_minor(dist['creator_fee'], 'NGN')}, breakage "
            f"{format_minor(dist['breakage'], 'NGN')} to the house")
