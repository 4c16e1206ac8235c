"""Demo chapter: payment matching, a cycle with a payment of every class, through real workers."""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from domain.money import format_minor
from infra.demo.context import DemoContext

ISK = 100  # minor units per ISK


def _links(ctx: DemoContext, journal_ids: list[str]) -> dict[str, tuple[str, str]]:
    with ctx.engine.connect() as conn:
        return {r.journal_id: (r.participation_id, r.match_type) for r in conn.execute(
            text("SELECT journal_id, participation_id, match_type FROM journal_payment_links "
                 "WHERE journal_id = ANY(:j)"), {"j": journal_ids})}


def _status(ctx: DemoContext, cycle: str) -> str | None:
    with ctx.engine.connect() as conn:
        return conn.execute(text("SELECT status FROM journal_cycles WHERE cycle_id = :c"),
                            {"c": cycle}).scalar_one_or_none()


def _ready(ctx: DemoContext, cycle: str, logi: int) -> int:
    """Participations of ``cycle`` recorded, or 0 while the LOGISTICS character is not."""
    with ctx.engine.connect() as conn:
        return conn.execute(text(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM journal_characters WHERE character_id = :l) "
            "THEN (SELECT count(*) FROM journal_participations WHERE cycle_id = :c) ELSE 0 END"),
            {"c": cycle, "l": str(logi)}).scalar_one()


def game_id(ctx: DemoContext, name: str) -> int:
    """A character id as the game gives them (a positive integer), unique to this demo run."""
    return 90_000_000_000 + zlib.crc32(ctx.id(name).encode())


def run(ctx: DemoContext) -> None:
    ctx.chapter("journal", "Payment matching: wallet-journal payments to cycle participations")
    logi, pilot, cycle = game_id(ctx, "logi"), game_id(ctx, "pilot"), ctx.id("cyc")
    ctx.send("register_character", request_id=ctx.id("reg-logi"), character_id=logi,
             name="Ballast Logistics", role="LOGISTICS")
    ctx.send("register_character", request_id=ctx.id("reg-pilot"), character_id=pilot,
             name="Some Pilot", role="USER")
    ctx.send("plan_cycle", request_id=ctx.id("plan"), cycle_id=cycle)
    ctx.wait_until(lambda: _status(ctx, cycle) == "planned", "the planned cycle")

    pledges = {"Alice": 1_000, "Bob": 2_000, "Carol": 3_000, "Dave": 4_000, "Erin": 5_000,
               "Frank": 1_000, "Gina": 3_000, "Hank": 1_000, "Twin": 500, "Ivan": 800}
    pid = {name: ctx.id(f"p-{name.lower()}") for name in pledges}
    pid["Twin 2"] = ctx.id("p-twin-2")
    for name, amount in [*pledges.items(), ("Twin 2", 500)]:
        ctx.send("create_participation", request_id=ctx.id(f"cp-{name}"), participation_id=pid[name],
                 cycle_id=cycle, user_id=ctx.id(f"user-{name.lower().replace(' ', '-')}"),
                 character_name=name.split()[0], amount=amount * ISK)
    # Several workers take these in parallel with the import below: wait for them (and the
    # LOGISTICS character), or the import's matching run may see only some of them.
    ctx.wait_until(lambda: _ready(ctx, cycle, logi) == len(pid), "the participations")
    ctx.say(f"cycle {cycle} planned with {len(pid)} participations; each is told to send "
            f"'ARB {cycle} <character>'")

    now = datetime.now(timezone.utc)
    memo = lambda name: f"ARB {cycle} {name}"  # noqa: E731
    payments = [  # (what it shows, journal suffix, ISK, memo, payer, ref_type, receiver)
        ("exact memo", "exact", 1_000, memo("Alice"), "alice", "player_donation", logi),
        ("memo containing the expected one", "contains", 2_000, f"invest {memo('Bob')} o7", "bob",
         "player_donation", logi),
        ("fuzzy memo, pledged amount", "fuzzy", 3_000, memo("Carlo"), "carol", "player_donation", logi),
        ("fuzzy memo, another amount", "fuzzy-wrong", 3_999, memo("Daev"), "dave", "player_donation",
         logi),
        ("partial payment", "partial", 2_000, memo("Erin"), "erin", "player_donation", logi),
        ("overpayment", "over", 1_500, memo("Frank"), "frank", "player_donation", logi),
        ("first of two payments", "several-1", 1_000, memo("Gina"), "gina", "player_donation", logi),
        ("second of two payments", "several-2", 2_000, memo("Gina"), "gina", "player_donation", logi),
        ("paid by another character", "alt", 1_000, memo("Hank"), "hanks-alt", "player_donation", logi),
        ("fits two participations", "tie", 500, memo("Twin"), "twin", "player_donation", logi),
        ("no memo", "no-memo", 800, "", "stranger", "player_donation", logi),
        ("to a USER character", "to-user", 800, memo("Ivan"), "ivan", "player_donation", pilot),
        ("not a donation", "bounty", 800, memo("Ivan"), "concord", "bounty_prizes", logi),
    ]
    jid = {suffix: ctx.id(f"j-{suffix}") for _, suffix, *_ in payments}
    entries = [
        {"journal_id": jid[suffix], "character_id": receiver,
         "date": (now - timedelta(minutes=len(payments) - i)).isoformat(), "ref_type": ref_type,
         "amount": isk * ISK, "reason": text_, "first_party_id": game_id(ctx, payer),
         "second_party_id": receiver}
        for i, (_, suffix, isk, text_, payer, ref_type, receiver) in enumerate(payments)
    ]
    ctx.send("import_wallet_journal", request_id=ctx.id("import-1"), entries=entries)
    auto = ["exact", "contains", "fuzzy", "partial", "over", "several-1", "several-2", "alt"]
    ctx.wait_until(lambda: len(_links(ctx, [jid[s] for s in auto])) == len(auto),
                   "the import's matching run")
    linked = _links(ctx, list(jid.values()))
    why = {"fuzzy-wrong": "unmatched: a fuzzy memo needs the pledged amount (score 80 < 100)",
           "tie": "ambiguous: scores the same for both Twins, left for review",
           "no-memo": "unmatched", "to-user": "no payment: received by a USER character",
           "bounty": "no payment: not a player_donation"}
    for label, suffix, isk, text_, *_ in payments:
        got = linked.get(jid[suffix])
        verdict = f"{got[1]} → {got[0]}" if got else why[suffix]
        ctx.say(f"{label}: {format_minor(isk * ISK, 'ISK')} '{text_}' — {verdict}")

    ctx.send("import_wallet_journal", request_id=ctx.id("import-2"), entries=entries)
    ctx.say("the same journal imported again: nothing new, nothing linked twice")
    ctx.send("link_payment", request_id=ctx.id("link-dave"), participation_id=pid["Dave"],
             journal_id=jid["fuzzy-wrong"], admin_id="ops-demo")
    ctx.wait_until(lambda: jid["fuzzy-wrong"] in _links(ctx, [jid["fuzzy-wrong"]]), "the admin's link")
    ctx.say("an admin linked Dave's mistyped payment by hand (manual)")

    counts = ctx.cli("matching", "run", "--cycle", cycle)
    ctx.show("matching run --cycle", counts)
    report = ctx.cli("matching", "report", "--cycle", cycle)
    ours = set(jid.values())
    report["unmatched"] = [u for u in report["unmatched"] if u["journal_id"] in ours]
    ctx.show("matching report --cycle (this run's payments)", report)
    ctx.say(f"left for review: {[a['journal_id'] for a in report['ambiguous']]} fits "
            f"{[a['participation_ids'] for a in report['ambiguous']]}; unmatched: "
            f"{[u['journal_id'] for u in report['unmatched']]}")
    hints = {u["journal_id"]: [f"{s['participation_id']} ({'+'.join(s['reasons'])})"
                               for s in u["suggestions"]] for u in report["unmatched"]}
    ctx.say(f"suggestions for review (same amount, known payer, nearest date; never applied): "
            f"{hints}; still awaiting payment: "
            + ", ".join(f"{a['character_name']} ({a['age_seconds']} s)" for a in report["awaiting"]))

    ctx.send("open_cycle", request_id=ctx.id("open"), cycle_id=cycle)
    ctx.wait_until(lambda: _status(ctx, cycle) == "open", "the cycle to open")
    shown = ctx.cli("cycle", "show", cycle)
    ctx.show("cycle show", shown)
    ctx.say(f"cycle opened: {shown['by_status'].get('EXPIRED', 0)} unpaid participations expired "
            f"(kept), initial capital {format_minor(shown['initial_capital'], 'ISK')}, "
            f"cycle account {format_minor(shown['account_balance'], 'ISK')}")

    ctx.send("close_cycle", request_id=ctx.id("close"), cycle_id=cycle, closed_by="ops-demo")
    ctx.wait_until(lambda: _status(ctx, cycle) == "closed", "the cycle to close")
    closed = ctx.cli("cycle", "show", cycle)
    ctx.show("cycle show (closed)", closed)
    ctx.say(f"cycle closed by {closed['closed_by']}: closing capital "
            f"{format_minor(closed['closing_capital'], 'ISK')} (the cycle account); it takes no "
            "participation or payment any more")
