"""The invariants after a chaos run (quiesced first), and the figures.

Each check returns a list of problems (empty: it holds); ``lost`` and ``doubled`` count
effects missing or applied twice.  The checker only reads: it never repairs anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from domain.markets import Commitment, Outcome, distribute
from infra import ledger
from tests import harness
from tests.chaos.workload import BUFFER_START, Model


@dataclass
class Verdict:
    problems: dict[str, list[str]] = field(default_factory=dict)
    lost: int = 0
    doubled: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def add(self, check: str, problem: str | None = None) -> None:
        self.problems.setdefault(check, [])
        if problem:
            self.problems[check].append(problem)


def expected_balances(m: Model, engine: Engine) -> dict[str, int]:
    """The model's wallet balances plus what each settled market must have paid."""
    want = dict(m.balances)
    for market in m.markets:
        with engine.connect() as conn:
            fees = conn.execute(text("SELECT house_fee_bps, creator_fee_bps FROM markets WHERE "
                                     "market_id = :m"), {"m": market["market_id"]}).one()
        commitments = [Commitment(c["commitment_id"], c["user_id"], c["option_id"], c["amount"])
                       for c in market["commitments"]]
        dist = distribute(commitments, Outcome.winner(market["winner"]), fees.house_fee_bps,
                          fees.creator_fee_bps)
        for c in market["commitments"]:
            code = f"user:{c['user_id']}:NGN"
            want[code] = want.get(code, 0) - c["amount"]
        for user, payout in dist.payouts_by_user().items():
            code = f"user:{user}:NGN"
            want[code] = want.get(code, 0) + payout
    return want


def check(m: Model, env: harness.TestEnv, engine: Engine, event_ids: list[str],
          worker_logs: list[str]) -> Verdict:
    v = Verdict()
    with engine.connect() as conn:
        done = {(r.actor, r.request_id) for r in conn.execute(text(
            "SELECT actor, request_id FROM processed_requests"))}
        letters = [dict(r._mapping) for r in conn.execute(text(
            "SELECT message_id, queue, actor, request_id, code, reason, body::text AS body "
            "FROM dead_letters"))]

    # 1. every expected effect applied (claimed exactly once: the claim is a primary key)
    v.add("effects")
    for actor, rid in sorted(m.applied - done):
        v.add("effects", f"{actor} {rid} never applied")
        v.lost += 1

    # 2. every balance equal to its expected value
    v.add("balances")
    want = expected_balances(m, engine)
    with engine.connect() as conn:
        have = ledger.balances(conn, list(want))
    for code, amount in sorted(want.items()):
        got = have.get(code, 0)
        if got != amount:
            v.add("balances", f"{code}: {got} instead of {amount}")
            if got < amount:
                v.lost += 1
            else:
                v.doubled += 1
    v.facts["wallets"] = len(want)

    # 3. refusals: dead-lettered with their reason, nothing applied
    v.add("refusals")
    by_rid = {(d["actor"], d["request_id"]): d for d in letters if d["request_id"]}
    for (actor, rid), part in sorted(m.refused.items()):
        d = by_rid.get((actor, rid))
        if d is None:
            v.add("refusals", f"{actor} {rid}: no dead letter")
        elif part not in d["reason"]:
            v.add("refusals", f"{actor} {rid}: reason {d['reason']!r} lacks {part!r}")
        if (actor, rid) in done:
            v.add("refusals", f"{actor} {rid} was refused and yet applied")
            v.doubled += 1

    # 4. every malformed envelope dead-lettered once, with a reason
    v.add("malformed")
    for marker, case in sorted(m.malformed.items()):
        rows = [d for d in letters if marker in d["body"]]
        if len(rows) != 1:
            v.add("malformed", f"{case} ({marker}): {len(rows)} dead letter rows")
        elif not rows[0]["reason"].startswith("invalid payload: "):
            v.add("malformed", f"{case} ({marker}): reason {rows[0]['reason']!r}")

    # 5. no dead letter nobody expected (a retried command given up on would be one)
    v.add("dead_letters")
    markers = list(m.malformed)
    for d in letters:
        if (d["actor"], d["request_id"]) in m.refused or any(x in d["body"] for x in markers):
            continue
        v.add("dead_letters", f"unexpected: {d['queue']} {d['actor']} {d['request_id']}: "
                              f"{d['reason'][:200]}")
    v.facts["dead_letters"] = len(letters)

    # 6. every event published and received; no event twice in the outbox
    v.add("events")
    with engine.connect() as conn:
        outbox = [r[0] for r in conn.execute(text(
            "SELECT body->>'event_id' FROM outbox WHERE kind = 'event'"))]
        unpublished = conn.execute(text(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar_one()
    seen = Counter(event_ids)
    missing = set(outbox) - set(seen)
    for eid in sorted(missing)[:20]:
        v.add("events", f"event {eid} never received")
    v.lost += len(missing)
    twice = [e for e, n in Counter(outbox).items() if n > 1]
    for eid in twice:
        v.add("events", f"event id {eid} in the outbox {Counter(outbox)[eid]} times")
    v.doubled += len(twice)
    strangers = set(seen) - set(outbox)
    for eid in sorted(strangers)[:20]:
        v.add("events", f"event {eid} received but not in the outbox")
    v.facts.update(events=len(outbox), events_redelivered=sum(n - 1 for n in seen.values()))

    # 7. the outbox empty of unpublished rows
    v.add("outbox")
    if unpublished:
        v.add("outbox", f"{unpublished} outbox rows never published")

    # 8. journal: each payment imported once and linked once, to its participation
    v.add("journal")
    if m.journal_links:
        with engine.connect() as conn:
            links = {r.journal_id: r.participation_id for r in conn.execute(text(
                "SELECT journal_id, participation_id FROM journal_payment_links WHERE "
                "journal_id = ANY(:j)"), {"j": list(m.journal_links)})}
        for jid, pid in sorted(m.journal_links.items()):
            if links.get(jid) != pid:
                v.add("journal", f"{jid} linked to {links.get(jid)} instead of {pid}")
                v.lost += jid not in links

    # 9. conversions: every job completed, transit empty, each buffer = flows + jobs
    v.add("conversions")
    with engine.connect() as conn:
        jobs = [dict(r._mapping) for r in conn.execute(text(
            "SELECT id, status, source_account, destination_account, source_amount, "
            "destination_amount FROM conversion_jobs"))]
        transit = {c: b for c, b in ledger.balances(conn, ["transit:USD", "transit:USDC"]).items() if b}
        buffers = ledger.balances(conn, [f"buffer:{a}" for a in BUFFER_START])
    for j in jobs:
        if j["status"] != "completed":
            v.add("conversions", f"job {j['id']} ended {j['status']}")
    if transit:
        v.add("conversions", f"transit not empty: {transit}")
    for a, start in BUFFER_START.items():
        code = f"buffer:{a}"
        expect = start + m.buffer_flows.get(a, 0)
        for j in jobs:
            if j["status"] == "completed":
                expect -= j["source_amount"] if j["source_account"] == code else 0
                expect += (j["destination_amount"] or 0) if j["destination_account"] == code else 0
        if buffers.get(code, 0) != expect:
            v.add("conversions", f"{code}: {buffers.get(code, 0)} instead of {expect}")
    v.facts["conversion_jobs"] = len(jobs)

    # 10. `ballast ledger check`, the real CLI against the run's database
    v.add("ledger_check")
    out = subprocess.run([sys.executable, "-m", "infra.cli.main", "ledger", "check", "--json"],
                         cwd=harness.ROOT, env=env.environ(), capture_output=True, text=True,
                         timeout=300)
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        doc = {"ok": False, "error": out.stderr.strip()[-300:]}
    if out.returncode != 0 or not doc.get("ok"):
        v.add("ledger_check", f"ledger check failed: {json.dumps(doc)[:500]}")

    # 11. no worker thread lost: a dead thread is replaced (a recovery), never left dead
    v.add("threads")
    replaced = sum(log.count('"worker.thread_replaced"') for log in worker_logs)
    failed = sum(log.count('"worker.thread_watch_failed"') for log in worker_logs)
    if failed:
        v.add("threads", f"the thread watch failed {failed} times")
    v.facts["threads_replaced"] = replaced

    # 12. every flow finished
    v.add("flows")
    for what in m.stuck:
        v.add("flows", f"stuck waiting for {what}")
    return v
