"""The workload: small flows over several capabilities at once, each a generator of steps
(``Send`` a signed command, ``Wait`` for its effect before the next depends on it), and the
model of what must follow from what was sent — effects applied once, balances, refusals.

Flows: wallet (deposits, a resent deposit, a withdrawal, a withdrawal refused by the
guard), challenge (two users join opposite sides, the challenge is resolved and settled),
market (commitments, resolution, settlement: payouts by ``domain.markets.distribute``),
journal (a cycle's participations, a journal import matched to them, the same import again),
conversion (a buffer drained, a settlement cycle, the conversion through the simulated
provider to completion; one such flow at a time, the buffers are shared).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import Engine, text

from infra import ledger

STAKE = 150_000  # NGN minor units
OPTIONS = [{"option_id": "red", "label": "Red"}, {"option_id": "green", "label": "Green"},
           {"option_id": "blue", "label": "Blue"}]
HOUSE_FEE_BPS, CREATOR_FEE_BPS = 500, 200
MIN_BALANCE_NGN = -1_000_000  # bronze credit line, minor units (README, tier table)
USDC_START = 50_000 * 10**6
BUFFER_START = {"system_buffer_usdc": USDC_START, "system_buffer_fiat": 150_000 * 100,
                "broker_operational": 250_000 * 100}
WAIT_TIMEOUT_S = 300.0  # s a flow waits for one effect before it is reported stuck


@dataclass
class Send:
    actor: str
    kwargs: dict[str, Any] | Callable[[], dict[str, Any] | None]
    expect: str = "applied"  # or "refused" (with ``reason``), or "any" (resends)
    reason: str = ""


@dataclass
class Wait:
    predicate: Callable[[], Any]
    what: str


@dataclass
class Model:
    """What the checker compares the database with."""

    balances: dict[str, int] = field(default_factory=dict)  # user wallet code -> expected
    applied: set[tuple[str, str]] = field(default_factory=set)
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # -> part of the reason
    malformed: dict[str, str] = field(default_factory=dict)  # marker -> case
    markets: list[dict[str, Any]] = field(default_factory=list)
    journal_links: dict[str, str] = field(default_factory=dict)  # journal_id -> participation
    buffer_flows: dict[str, int] = field(default_factory=dict)  # account type -> sum sent
    conversions: int = 0
    flows_done: dict[str, int] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)
    messages: int = 0

    def credit(self, code: str, amount: int) -> None:
        self.balances[code] = self.balances.get(code, 0) + amount


def uid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Reader:
    """Reads for the flows; through a database outage a read is tried again."""

    RETRY_S = 120.0  # s

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        deadline = time.monotonic() + self.RETRY_S
        while True:
            try:
                with self.engine.connect() as conn:
                    return fn(conn)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def balance(self, code: str) -> int:
        return self._read(lambda conn: ledger.balances(conn, [code]).get(code, 0))

    def scalar(self, sql: str, **params: Any) -> Any:
        return self._read(lambda conn: conn.execute(text(sql), params).scalar_one_or_none())

    def done(self, actor: str, request_id: str) -> bool:
        """The effect of ``(actor, request_id)`` is committed."""
        return bool(self.scalar("SELECT 1 FROM processed_requests WHERE actor = :a AND "
                                "request_id = :r", a=actor, r=request_id))


Flow = Iterator[Send | Wait]


def wallet_flow(m: Model, rd: Reader, rng: random.Random) -> Flow:
    user, cur = uid("w"), "NGN"
    code = f"user:{user}:{cur}"
    first = dict(request_id=uid("dep"), user_id=user, currency=cur,
                 amount=rng.randint(1_000, 400_000), reference="bank")
    yield Send("deposit", first)
    second = dict(request_id=uid("dep"), user_id=user, currency=cur,
                  amount=rng.randint(1_000, 400_000), reference="card")
    yield Send("deposit", second)
    yield Send("deposit", dict(first), expect="any")  # the upstream app resends
    out = rng.randint(1, 800_000)  # within the credit line whatever the order
    yield Send("withdraw", dict(request_id=uid("wd"), user_id=user, currency=cur, amount=out,
                                reference="payout"))
    m.credit(code, first["amount"] + second["amount"] - out)
    yield Wait(lambda: rd.balance(code) == m.balances[code], f"wallet {user}")
    too_much = m.balances[code] - MIN_BALANCE_NGN + 1  # one minor unit past the credit line
    yield Send("withdraw", dict(request_id=uid("wdx"), user_id=user, currency=cur,
                                amount=too_much, reference="too much"),
               expect="refused", reason="min_balance")


def challenge_flow(m: Model, rd: Reader, rng: random.Random) -> Flow:
    cid, yes, no = uid("c"), uid("cy"), uid("cn")
    yield Send("open_challenge", dict(request_id=uid("oc"), challenge_id=cid,
                                      title="Eagles win on Sunday?", currency="NGN", stake=STAKE,
                                      admin_created=True))
    for u in (yes, no):
        yield Send("deposit", dict(request_id=uid("dep"), user_id=u, currency="NGN", amount=STAKE,
                                   reference="card"))
    yield Wait(lambda: rd.scalar("SELECT status FROM challenges WHERE id = :c", c=cid) == "open"
               and rd.balance(f"user:{yes}:NGN") == STAKE and rd.balance(f"user:{no}:NGN") == STAKE,
               f"challenge {cid} open, deposits in")
    for u, side in ((yes, "YES"), (no, "NO")):
        yield Send("join_challenge", dict(request_id=uid("j"), challenge_id=cid, user_id=u,
                                          side=side))
    yield Wait(lambda: rd.balance(f"user:{yes}:NGN") == 0 and rd.balance(f"user:{no}:NGN") == 0,
               f"challenge {cid} joined")
    result = rng.choice(["YES", "NO"])
    yield Send("resolve_challenge", dict(request_id=uid("rc"), challenge_id=cid, result=result,
                                         resolved_by="ops-chaos"))
    m.credit(f"user:{yes}:NGN", 2 * STAKE if result == "YES" else 0)
    m.credit(f"user:{no}:NGN", 2 * STAKE if result == "NO" else 0)
    yield Wait(lambda: rd.balance(f"escrow:challenge:{cid}") == 0 and
               rd.balance(f"user:{yes}:NGN") + rd.balance(f"user:{no}:NGN") == 2 * STAKE,
               f"challenge {cid} settled")


def market_flow(m: Model, rd: Reader, rng: random.Random) -> Flow:
    mid = uid("m")
    users = [uid("mu") for _ in range(rng.randint(2, 4))]
    for u in users:
        yield Send("deposit", dict(request_id=uid("dep"), user_id=u, currency="NGN",
                                   amount=1_000_000, reference="bank"))
    yield Send("open_market", dict(request_id=uid("om"), market_id=mid, title="colour",
                                   kind="multi", options=OPTIONS, currency="NGN",
                                   creator_id="maker", creator_fee_bps=CREATOR_FEE_BPS,
                                   house_fee_bps=HOUSE_FEE_BPS))
    yield Wait(lambda: rd.scalar("SELECT status FROM markets WHERE market_id = :m", m=mid) == "open"
               and all(rd.balance(f"user:{u}:NGN") == 1_000_000 for u in users),
               f"market {mid} open, deposits in")
    placed = []
    for u in users:
        for _ in range(rng.randint(1, 2)):
            c = dict(commitment_id=uid("mc"), user_id=u, option_id=rng.choice(OPTIONS)["option_id"],
                     amount=rng.randint(1_000, 100_000))
            placed.append(c)
            yield Send("place_commitment", dict(request_id=uid("pc"), market_id=mid, **c))
    total = sum(c["amount"] for c in placed)
    yield Wait(lambda: rd.balance(f"escrow:market:{mid}") == total, f"market {mid} commitments")
    winner = rng.choice(OPTIONS)["option_id"]
    yield Send("resolve_market", dict(request_id=uid("rm"), market_id=mid,
                                      winning_option_id=winner, resolved_by="ops-chaos"))
    for u in users:
        m.credit(f"user:{u}:NGN", 1_000_000)
    m.markets.append({"market_id": mid, "winner": winner, "commitments": placed})
    yield Wait(lambda: rd.scalar("SELECT status FROM markets WHERE market_id = :m", m=mid)
               == "settled", f"market {mid} settled")


_game_ids = iter(range(9_100_000_000 + (int(time.time()) % 100_000) * 1_000, 10**12))


def journal_flow(m: Model, rd: Reader, rng: random.Random) -> Flow:
    logi, payer, cycle = next(_game_ids), next(_game_ids), uid("cyc")
    yield Send("register_character", dict(request_id=uid("rch"), character_id=logi,
                                          name="Chaos Logistics", role="LOGISTICS"))
    yield Send("plan_cycle", dict(request_id=uid("pl"), cycle_id=cycle))
    yield Wait(lambda: rd.scalar("SELECT status FROM journal_cycles WHERE cycle_id = :c", c=cycle)
               == "planned", f"cycle {cycle} planned")
    names = [f"Pilot{chr(65 + i)}{uuid.uuid4().hex[:4]}" for i in range(rng.randint(2, 4))]
    parts = {n: (uid("p"), 1_000 * (i + 1) * 100) for i, n in enumerate(names)}
    for n, (pid, amount) in parts.items():
        yield Send("create_participation", dict(request_id=uid("cp"), participation_id=pid,
                                                cycle_id=cycle, user_id=uid("ju"),
                                                character_name=n, amount=amount))
    yield Wait(lambda: rd.scalar("SELECT count(*) FROM journal_participations WHERE cycle_id = :c",
                                 c=cycle) == len(parts)
               and rd.scalar("SELECT count(*) FROM journal_characters WHERE character_id = :l",
                             l=str(logi)) == 1, f"cycle {cycle} participations")
    now = datetime.now(timezone.utc)
    entries = []
    for i, (n, (pid, amount)) in enumerate(parts.items()):
        jid = uid("j")
        entries.append({"journal_id": jid, "character_id": logi,
                        "date": (now - timedelta(minutes=10 - i)).isoformat(),
                        "ref_type": "player_donation", "amount": amount,
                        "reason": f"ARB {cycle} {n}", "first_party_id": payer,
                        "second_party_id": logi})
        m.journal_links[jid] = pid
    yield Send("import_wallet_journal", dict(request_id=uid("imp"), entries=entries))
    yield Send("import_wallet_journal", dict(request_id=uid("imp"), entries=entries))  # again
    jids = [e["journal_id"] for e in entries]
    yield Wait(lambda: rd.scalar("SELECT count(*) FROM journal_payment_links WHERE "
                                 "journal_id = ANY(:j)", j=jids) == len(jids),
               f"cycle {cycle} payments matched")


def conversion_flow(m: Model, rd: Reader, rng: random.Random) -> Flow:
    """A drained USDC buffer refilled by a conversion; the sources are topped up after."""
    since = rd.scalar("SELECT coalesce(max(id), 0) FROM conversion_jobs")
    left = rng.randint(2_000, 8_000) * 10**6  # below the buffer's 10,000 USDC minimum
    for _ in range(5):  # a job already in flight may refill the buffer first: drain again
        drained = uid("flow")

        def drain(rid=drained):
            amount = left - rd.balance("buffer:system_buffer_usdc")
            return dict(request_id=rid, account_type="system_buffer_usdc",
                        amount=amount or -1, reference="payouts")
        yield Send("record_buffer_flow", drain)
        # (the scheduler's own cycle may refill it at once: wait for the flow, not the level)
        yield Wait(lambda rid=drained: rd.done("record_buffer_flow", rid), "USDC drained")
        cycle = uid("cycle")
        yield Send("run_settlement_cycle", dict(request_id=cycle, trigger="manual",
                                                requested_by="ops-chaos"))
        yield Wait(lambda c=cycle: rd.done("run_settlement_cycle", c)
                   and not rd.scalar("SELECT count(*) FROM conversion_jobs WHERE status NOT IN "
                                     "('completed', 'failed', 'cancelled')"), "conversion finished")
        if rd.scalar("SELECT count(*) FROM conversion_jobs WHERE id > :s", s=since):
            break
    m.conversions += 1
    for account_type in ("system_buffer_fiat", "broker_operational"):
        def top_up(a=account_type):
            delta = BUFFER_START[a] - rd.balance(f"buffer:{a}")
            return dict(request_id=uid("flow"), account_type=a, amount=delta,
                        reference="top up") if delta else None
        yield Send("record_buffer_flow", top_up)


FLOWS = {"wallet": (wallet_flow, 4), "challenge": (challenge_flow, 2), "market": (market_flow, 2),
         "journal": (journal_flow, 1)}
