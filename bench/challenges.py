"""Challenges per second through the whole treasury-balancing pipeline, against a no-op actor.

Each challenge: ``open_challenge``, ``configure_treasury``, five ``join_challenge`` (four
YES, one NO: one pair, three waiting), ``fill_treasury`` of three (→ ``assign_personas`` →
``create_treasury_matches``), ``resolve_challenge`` (→ ``settle_challenge``): 12 messages,
every one through RabbitMQ and a real worker.  The phases run for all challenges at once
(a challenge's joins need it open, its fill needs its joins, ...), timed from the first
open to the last settlement.  Wallets are funded before the clock starts.

The baseline is the no-op actor's rate (``bench.common.noop_rate``) on the same worker,
divided by the 12 messages a challenge takes: the challenges per second the pipeline
would reach if its messages did nothing.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid

from sqlalchemy import text

from bench.common import (bench_env, cpu_since, cpu_snapshot, cpu_split, db_count, noop_rate, publish, result,
                          start_worker)

CHALLENGES = 200
STAKE = 10_000  # ₦100.00
SIDES = ["YES", "YES", "YES", "YES", "NO"]
FILL = 3
MESSAGES_PER_CHALLENGE = 12
THREADS = 8
TIMEOUT = 300.0  # s per phase


class _Sampler:
    """What the bench database's other backends are doing, sampled every ``interval`` s
    from ``pg_stat_activity`` while the timed run runs: per phase, the mean number of
    backends running a statement (``active``, CPU or I/O), waiting on a lock (by lock type:
    ``Lock:transactionid`` is a row another transaction holds), waiting on the worker
    between statements (``idle in transaction``: Python, or a thread waiting for the GIL),
    flushing WAL at commit (``LWLock/IO:WAL…``)."""

    def __init__(self, env, interval: float = 0.05) -> None:
        from infra.db.engine import database_name, get_engine

        self.engine, self.db, self.interval = get_engine(env.database_url), \
            database_name(env.database_url), interval
        self.phase = "open"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(self.interval):
                rows = conn.execute(text(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid() "
                    "AND state IN ('active', 'idle in transaction')"), {"d": self.db}).all()
                conn.rollback()
                phase = self.phase
                self.samples[phase] += 1
                for r in rows:
                    if r.state == "idle in transaction":
                        what = "idle in transaction"
                    elif r.wait_event_type in ("Lock", "LWLock", "IO", "IPC"):
                        what = f"{r.wait_event_type}:{r.wait_event}"
                    else:
                        what = "active"
                    self.counts[phase][what] += 1

    def describe(self) -> str:
        out = []
        for phase, n in self.samples.items():
            top = self.counts[phase].most_common(4)
            out.append(f"{phase}: " + ", ".join(f"{what} {k / n:.1f}" for what, k in top))
        return "; ".join(out)


def _wait(env, sql: str, n: int, what: str, **params) -> None:
    deadline = time.monotonic() + TIMEOUT
    while db_count(env, sql, **params) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: fewer than {n} after {TIMEOUT:.0f}s")
        time.sleep(0.05)


def _fund(env, tag: str, users: list[str]) -> None:
    publish(env, "fund_treasury", [dict(request_id=f"{tag}fund", currency="NGN",
                                        amount=CHALLENGES * FILL * STAKE, reference="bench",
                                        performed_by="bench")])
    publish(env, "deposit", [dict(request_id=f"{tag}dep-{u}", user_id=u, currency="NGN",
                                  amount=STAKE, reference="bench") for u in users])
    _wait(env, "SELECT count(*) FROM processed_requests WHERE actor = 'deposit' "
               "AND request_id LIKE :t", len(users), "deposits", t=f"{tag}dep-%")
    _wait(env, "SELECT count(*) FROM processed_requests WHERE actor = 'fund_treasury' "
               "AND request_id = :t", 1, "treasury funding", t=f"{tag}fund")


def challenge_rate(env, n: int, worker=None, split: dict | None = None,
                   sampler: _Sampler | None = None) -> float:
    tag = f"b{uuid.uuid4().hex[:6]}-"
    ids = [f"{tag}{i}" for i in range(n)]
    users = {cid: [f"{cid}-u{k}" for k in range(len(SIDES))] for cid in ids}
    _fund(env, tag, [u for us in users.values() for u in us])
    like = {"t": f"{tag}%"}

    before = cpu_snapshot(env, worker) if split is not None else None
    started = time.monotonic()
    publish(env, "open_challenge", [dict(request_id=f"{cid}-open", challenge_id=cid, title="bench",
                                         currency="NGN", stake=STAKE, admin_created=True)
                                    for cid in ids])
    _wait(env, "SELECT count(*) FROM challenges WHERE id LIKE :t", n, "opens", **like)
    phases = {"open": time.monotonic() - started}
    if sampler is not None:
        sampler.phase = "configure + join"
    publish(env, "configure_treasury", [dict(request_id=f"{cid}-cfg", challenge_id=cid,
                                             max_risk=FILL * STAKE, notes="", admin_id="bench")
                                        for cid in ids])
    publish(env, "join_challenge", [dict(request_id=f"{u}-join", challenge_id=cid, user_id=u,
                                         side=side)
                                    for cid in ids for u, side in zip(users[cid], SIDES)])
    _wait(env, "SELECT count(*) FROM challenge_participants WHERE challenge_id LIKE :t",
          n * len(SIDES), "joins", **like)
    _wait(env, "SELECT count(*) FROM challenge_treasury WHERE challenge_id LIKE :t", n,
          "treasury configs", **like)
    phases["configure + join"] = time.monotonic() - started - sum(phases.values())
    if sampler is not None:
        sampler.phase = "fill"
    publish(env, "fill_treasury", [dict(request_id=f"{cid}-fill", challenge_id=cid, side="YES",
                                        match_count=FILL, admin_id="bench") for cid in ids])
    _wait(env, "SELECT count(*) FROM treasury_fills WHERE challenge_id LIKE :t "
               "AND status = 'created'", n, "fills", **like)
    phases["fill (assign, create)"] = time.monotonic() - started - sum(phases.values())
    if sampler is not None:
        sampler.phase = "resolve + settle"
    publish(env, "resolve_challenge", [dict(request_id=f"{cid}-res", challenge_id=cid,
                                            result="NO" if i % 2 else "YES", resolved_by="bench")
                                       for i, cid in enumerate(ids)])
    _wait(env, "SELECT count(*) FROM challenges WHERE id LIKE :t AND status = 'settled'", n,
          "settlements", **like)
    elapsed = time.monotonic() - started
    phases["resolve + settle"] = elapsed - sum(phases.values())
    rate = n / elapsed
    if before is not None:
        split.update(cpu_since(before))
        split["phases"] = phases
    return rate


def _ms(split: dict, n: int) -> str:
    return (f"{1000 * split['worker_s'] / n:.2f} ms in the worker (Python) + "
            f"{1000 * split['db_s'] / n:.2f} ms in PostgreSQL backends")


def _phases(split: dict) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in split["phases"].items())


def _busy(split: dict) -> str:
    return f"{(split['worker_s'] + split['db_s']) / split['wall_s']:.2f}"


def run() -> dict:
    with bench_env() as env, start_worker(env, threads=THREADS) as worker:
        baseline = noop_rate(env, 5000, worker) / MESSAGES_PER_CHALLENGE
        challenge_rate(env, 20)  # warm-up
        split: dict = {}
        with _Sampler(env) as sampler:
            value = challenge_rate(env, CHALLENGES, worker, split, sampler)
        noop_split = cpu_split(env, worker, lambda: noop_rate(env, 2000, worker, rounds=1))
        matches = db_count(env, "SELECT count(*) FROM treasury_matches WHERE status = 'settled'")
        escrow = db_count(env, "SELECT COALESCE(sum(balance), 0) FROM accounts "
                               "WHERE code LIKE 'escrow:challenge:%'")
    if escrow != 0:
        raise AssertionError(f"escrows hold {escrow} after every settlement")
    return result(
        "challenges",
        value,
        "challenges/s",
        baseline,
        f"{CHALLENGES} challenges, each open + configure + 5 joins + fill of {FILL} "
        f"(assign, create) + resolve + settle = {MESSAGES_PER_CHALLENGE} messages, phases "
        f"barriered across challenges; baseline = no-op messages/s / {MESSAGES_PER_CHALLENGE}; "
        f"1 worker process x {THREADS} threads; {matches} treasury matches settled, escrows at 0. "
        f"CPU per message of the timed run: {_ms(split, CHALLENGES * MESSAGES_PER_CHALLENGE)}; "
        f"no-op: {_ms(noop_split, 2050)}; the phases' barriers leave cores idle "
        f"({_busy(split)} of the 2 cores busy with worker + database); wall time by phase "
        f"(each until its last message is done): {_phases(split)}; backends of the bench "
        f"database by state, mean of samples every 50 ms: {sampler.describe()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end",
    )
