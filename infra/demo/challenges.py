"""Demo chapter: a lopsided admin challenge balanced by the treasury, then settled."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from domain.challenges import format_amount
from infra import ledger, rabbit
from infra.demo.context import DemoContext

STAKE = 150_000  # ₦1,500.00


def _balance(ctx: DemoContext, code: str) -> int:
    with ctx.engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def _scalar(ctx: DemoContext, sql: str, **params):
    with ctx.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one_or_none()


def _applied(ctx: DemoContext, actor: str, request_id: str) -> bool:
    """The command ``(actor, request_id)`` took effect (its claim is committed)."""
    return bool(_scalar(ctx, "SELECT 1 FROM processed_requests WHERE actor = :a AND "
                             "request_id = :r", a=actor, r=request_id))


def _events(ctx: DemoContext, name: str, cid: str) -> list[dict]:
    with ctx.engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT body FROM outbox WHERE event_name = :n AND body->'data'->>'challenge_id' = :c "
            "ORDER BY id"), {"n": name, "c": cid}).scalars())


def run(ctx: DemoContext) -> None:
    ctx.chapter("challenges", "Treasury balancing: joins, a treasury fill with shadow personas, "
                              "a resolution, the dashboard")
    money = lambda n: format_amount(n, "NGN")  # noqa: E731
    cid = ctx.id("eagles")
    fund = ctx.id("fund-challenges")
    ctx.send("fund_treasury", request_id=fund, currency="NGN",
             amount=10 * STAKE, reference="treasury capital for challenges", performed_by="cfo")
    ctx.send("open_challenge", request_id=ctx.id("open-eagles"), challenge_id=cid,
             title="Super Eagles win on Sunday?", currency="NGN", stake=STAKE, admin_created=True)
    names = ["chidi", "funmi", "emeka", "zara", "tobi", "ngozi"]
    sides = ["YES", "YES", "NO", "YES", "YES", "YES"]
    users = [ctx.id(n) for n in names]
    for user in users:
        ctx.send("deposit", request_id=ctx.id(f"dep-{user}"), user_id=user, currency="NGN",
                 amount=STAKE, reference="card")
    ctx.wait_until(lambda: all(_balance(ctx, f"user:{u}:NGN") == STAKE for u in users), "deposits")
    ctx.wait_until(lambda: _scalar(ctx, "SELECT status FROM challenges WHERE id = :c", c=cid),
                   "the challenge to open")
    for user, side in zip(users, sides):  # one after the other: first come, first served
        ctx.send("join_challenge", request_id=ctx.id(f"join-{user}"), challenge_id=cid,
                 user_id=user, side=side)
        ctx.wait_until(lambda: _balance(ctx, f"user:{user}:NGN") == 0, f"{user} to join")
    doc = ctx.cli("challenge", "show", cid)
    ctx.say(f"6 users joined at {money(STAKE)} each: YES {doc['yes_count']}, NO {doc['no_count']}; "
            f"emeka (NO) is paired with chidi, the first YES; {doc['unmatched_yes']} YES users wait "
            f"(gap {money(doc['gap'])}, match rate {doc['match_rate']}%)")

    ctx.send("configure_treasury", request_id=ctx.id("cfg-eagles"), challenge_id=cid,
             max_risk=3 * STAKE, notes="cover the YES overflow, at most 3 stakes", admin_id="ops-ada")
    # Commands are not taken in the order they were sent: the worker's threads take the
    # configuration and the fill of one queue in parallel, and a fill that locks the
    # challenge first is refused ("no treasury config").  Send the fill once the
    # configuration (and the treasury's capital, on another queue) took effect.
    ctx.wait_until(lambda: _scalar(ctx, "SELECT max_risk FROM challenge_treasury "
                                        "WHERE challenge_id = :c", c=cid) == 3 * STAKE
                   and _applied(ctx, "fund_treasury", fund), "the treasury's configuration")
    ctx.send("fill_treasury", request_id=ctx.id("fill-eagles"), challenge_id=cid, side="YES",
             match_count=4, admin_id="ops-ada")
    ctx.wait_until(lambda: _events(ctx, "admin.treasury.match_created", cid), "the treasury matches")
    doc = ctx.cli("challenge", "show", cid)
    short = _events(ctx, "admin.treasury.fill_shortfall", cid)
    ctx.say(f"the admin asked for 4 treasury matches; the budget of {money(3 * STAKE)} allowed "
            f"{len(doc['matches'])} (shortfall {short[0]['data']['shortfall'] if short else 0}, "
            f"reason {', '.join(short[0]['data']['reasons']) if short else '-'}): "
            + ", ".join(f"{m['user_id'].split('-')[0]} vs {m['persona']}" for m in doc["matches"]))
    ctx.show("challenge show (after the fill)", doc)
    ctx.show("treasury dashboard (stakes at risk)", ctx.cli("treasury", "dashboard"))

    treasury_before = _balance(ctx, "treasury:NGN")
    ctx.send("resolve_challenge", request_id=ctx.id("resolve-eagles"), challenge_id=cid,
             result="NO", resolved_by="ops-ada")
    ctx.wait_until(lambda: _scalar(ctx, "SELECT status FROM challenges WHERE id = :c", c=cid)
                   == "settled", "the settlement")
    told = {e["recipient"]: e["data"]["message"] for e in _events(ctx, "challenge.settled", cid)}
    for name, user in zip(names, users):
        ctx.say(f"{name}: {told.get(user, '?')} (wallet {money(_balance(ctx, f'user:{user}:NGN'))})")
    summary = _events(ctx, "admin.treasury.settlement", cid)[0]["data"]
    ctx.say(f"result NO: treasury won {summary['won']}, lost {summary['lost']}, refunded "
            f"{summary['refunded']}, net P&L {money(summary['net_pnl'])}; escrow now "
            f"{money(_balance(ctx, f'escrow:challenge:{cid}'))}; treasury "
            f"{money(treasury_before)} → {money(_balance(ctx, 'treasury:NGN'))}")
    ctx.say(f"the admins' line: {summary['message']}")
    ctx.show("challenge show (settled)", ctx.cli("challenge", "show", cid))
    ctx.show("treasury dashboard (settled)", ctx.cli("treasury", "dashboard"))
    _limits(ctx)


def _limits(ctx: DemoContext) -> None:
    """A challenge with a time limit and a cap: the join beyond the cap is refused."""
    cid = ctx.id("cupfinal")
    closes = datetime.now(timezone.utc) + timedelta(hours=2)
    ctx.send("open_challenge", request_id=ctx.id("open-cupfinal"), challenge_id=cid,
             title="Cup final: a draw?", currency="NGN", stake=STAKE, admin_created=True,
             closes_at=closes.isoformat(), max_participants=2)
    users = [ctx.id(n) for n in ("kemi", "sola", "bayo")]
    for user in users:
        ctx.send("deposit", request_id=ctx.id(f"dep-{user}"), user_id=user, currency="NGN",
                 amount=STAKE, reference="card")
    ctx.wait_until(lambda: all(_balance(ctx, f"user:{u}:NGN") == STAKE for u in users), "deposits")
    ctx.wait_until(lambda: _scalar(ctx, "SELECT status FROM challenges WHERE id = :c", c=cid),
                   "the cup final to open")
    for user, side in zip(users[:2], ("YES", "NO")):
        ctx.send("join_challenge", request_id=ctx.id(f"join-{user}"), challenge_id=cid,
                 user_id=user, side=side)
        ctx.wait_until(lambda: _balance(ctx, f"user:{user}:NGN") == 0, f"{user} to join")
    late = ctx.id("join-bayo-late")
    ctx.send("join_challenge", request_id=late, challenge_id=cid, user_id=users[2], side="YES")
    letter = ctx.wait_until(lambda: [d.summary() for d in rabbit.list_dead_letters("ballast.challenges")
                                     if d.summary()["request_id"] == late], "the refused join")
    found = _events(ctx, "match.found", cid)
    doc = ctx.cli("challenge", "show", cid)
    ctx.say(f"a cup final open until {doc['closes_at']} for at most {doc['max_participants']}: "
            f"kemi and sola are told \"{found[0]['data']['message']}\"; bayo, the third, is refused: "
            f"{letter[0]['reason']} (his {format_amount(STAKE, 'NGN')} stays in his wallet)")
    ctx.show("challenge show (limits)", {k: doc[k] for k in (
        "challenge_id", "closes_at", "max_participants", "user_count", "potential_matches",
        "fillable", "match_rate")})
