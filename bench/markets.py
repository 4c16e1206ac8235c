"""Settling a market of 100,000 commitments against writing as many rows by COPY.

The market (multi-option, one commitment per user, every user funded and every stake
already in the escrow) is seeded straight into the benchmark's own database.  The
measured part is what the ``settle_market`` step does, in one transaction: stream the
commitments in batches, write one audit line per commitment, pay each batch's winners
through ``wallets.apply_changes`` (guard, ledger, wallet audit), fees and breakage to the
house and the creator, one notification per user into the outbox, commit.

The yardstick, in the same run and database: ``COPY`` of the same number of audit-line
rows into a bare table — the fastest way PostgreSQL takes rows at all.  ``ratio`` =
settlement rate / COPY rate (higher is better; 1.0 would be "as fast as the bare COPY").

Memory: before the timed run, markets of ``SMALL`` and ``LARGE`` commitments are settled
under ``tracemalloc``; their peaks (in the note) stay the same when the market grows,
because no commitment passes through Python.

The note says where the time went, measured: the statements (the slowest by name, each
the time its call took: the round trip and PostgreSQL's work), Python's CPU, the commit.
"""

from __future__ import annotations

import io
import time
import tracemalloc

from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from bench.common import bench_env, result
from domain.markets import SETTLING, Market

N = 100_000  # commitments of the timed market
SMALL, LARGE = 20_000, 100_000  # the memory comparison (under tracemalloc)
OPTIONS = ("red", "green", "blue", "amber")
STAKE = 1_000  # minor units, varied per commitment below


def _broker() -> StubBroker:
    from infra.contract import QUEUES

    broker = StubBroker()
    for q in QUEUES:
        broker.declare_queue(q)
    return broker


def seed(engine, market_id: str, n: int) -> int:
    """An open market with ``n`` commitments (one per user, every user funded, every stake
    in the escrow), written by the database alone so the seed leaves no Python memory
    behind; ``ballast ledger check`` after the run proves it balanced.  Returns the pool."""
    from infra.uow import UnitOfWork
    from services.markets import escrow_account

    market = Market.open(market_id, "multi", OPTIONS, "NGN", "bench-creator", 200)
    params = {"m": market_id, "n": n, "suffix": ":NGN", "stake": STAKE, "opts": list(OPTIONS),
              "escrow": escrow_account(market_id), "fund": 10_000}
    steps = [
        # users i = 0..n-1 with stake STAKE + (i * 7919) % 5000 on option (i * 31) % 4
        "CREATE TEMP TABLE seed ON COMMIT DROP AS SELECT i, :m || '-u' || i AS u, "
        "'user:' || :m || '-u' || i || :suffix AS code, "
        "CAST(:stake + (i * 7919) % 5000 AS bigint) AS stake, "
        "(CAST(:opts AS text[]))[1 + (i * 31) % 4] AS opt FROM generate_series(0, :n - 1) i",
        "INSERT INTO accounts (code, currency, allow_negative) SELECT code, 'NGN', true FROM seed "
        "UNION ALL SELECT :escrow, 'NGN', false",
        "INSERT INTO ledger_transactions (kind, memo) VALUES ('deposit', 'bench funding ' || :m), "
        "('market_commitment', 'bench wagers ' || :m)",
        # funding: world -> users (stake + fund each); wagers: users -> escrow
        "INSERT INTO ledger_entries (transaction_id, account_id, currency, amount) "
        "SELECT t.id, a.id, 'NGN', s.stake + :fund FROM seed s JOIN accounts a ON a.code = s.code, "
        "ledger_transactions t WHERE t.memo = 'bench funding ' || :m "
        "UNION ALL SELECT t.id, w.id, 'NGN', -(SELECT sum(stake + :fund) FROM seed) "
        "FROM ledger_transactions t, accounts w WHERE t.memo = 'bench funding ' || :m "
        "AND w.code = 'world:NGN' "
        "UNION ALL SELECT t.id, a.id, 'NGN', -s.stake FROM seed s JOIN accounts a ON a.code = s.code, "
        "ledger_transactions t WHERE t.memo = 'bench wagers ' || :m "
        "UNION ALL SELECT t.id, e.id, 'NGN', (SELECT sum(stake) FROM seed) "
        "FROM ledger_transactions t, accounts e WHERE t.memo = 'bench wagers ' || :m "
        "AND e.code = :escrow",
        "UPDATE accounts a SET balance = a.balance + x.total FROM (SELECT account_id, sum(amount) "
        "AS total FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id "
        "WHERE t.memo IN ('bench funding ' || :m, 'bench wagers ' || :m) GROUP BY account_id) x "
        "WHERE a.id = x.account_id",
        "INSERT INTO market_commitments (commitment_id, market_id, user_id, option_id, method, "
        "amount, wallet_account_id, transaction_id) SELECT s.u || '-c', :m, s.u, s.opt, "
        "'option_id', s.stake, a.id, t.id FROM seed s JOIN accounts a ON a.code = s.code, "
        "ledger_transactions t WHERE t.memo = 'bench wagers ' || :m",
    ]
    with UnitOfWork(engine=engine, broker=_broker()) as uow:
        uow.markets.add(market, "bench market", [o.title() for o in OPTIONS])
        for sql in steps:
            uow.conn.execute(text(sql), params)
        uow.conn.execute(text("ANALYZE market_commitments; ANALYZE accounts"))
        pool = int(uow.conn.execute(text("SELECT balance FROM accounts WHERE code = :escrow"),
                                    params).scalar_one())
        uow.commit()
        return pool


#: Statement labels for the note: the first words of the SQL -> a name.
LABELS = (
    ("CREATE TEMP TABLE settle_lines", "compute lines"),
    ("INSERT INTO market_distribution_lines", "audit lines"),
    ("WITH t AS MATERIALIZED", "payouts (ledger_post_many)"),
    ("INSERT INTO wallet_audit", "wallet audit"),
    ("UPDATE market_commitments", "commitments settled"),
    ("WITH src AS", "notifications"),
    ("SELECT (SELECT count(*) FROM settle_lines)", "totals"),
    ("SELECT * FROM ledger_post_many", "fees"),
)


def _label(statement: str) -> str:
    return next((name for prefix, name in LABELS if statement.lstrip().startswith(prefix)),
                "other")


def statement_times(engine):
    """A context manager: seconds per statement label while it is open (into a dict)."""
    from contextlib import contextmanager

    from sqlalchemy import event

    @contextmanager
    def watching():
        times: dict[str, float] = {}
        started: list[float] = []

        def before(*_a):
            started.append(time.perf_counter())

        def after(_conn, _cur, statement, *_a):
            name = _label(statement)
            times[name] = times.get(name, 0.0) + time.perf_counter() - started.pop()

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        try:
            yield times
        finally:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)

    return watching()


COMMIT_SECONDS: list[float] = []


def settle_once(engine, market_id: str) -> float:
    """Resolve (as ``resolve_market`` does) then settle; returns the settlement's seconds
    (the commit's are appended to ``COMMIT_SECONDS``)."""
    from infra.uow import UnitOfWork
    from services.markets import settle

    with UnitOfWork(engine=engine, broker=_broker()) as uow:
        dist = uow.markets.add_distribution(market_id, "red", "bench", None)
        uow.markets.set_status(market_id, SETTLING)
        uow.commit()
    started = time.monotonic()
    with UnitOfWork(engine=engine, broker=_broker()) as uow:
        done = settle(uow, dist)
        committing = time.monotonic()
        uow.commit()
        COMMIT_SECONDS.append(time.monotonic() - committing)
    elapsed = time.monotonic() - started
    assert done is not None and done.commitments == repository_count(engine, market_id)
    return elapsed


def repository_count(engine, market_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM market_commitments WHERE market_id = :m"),
                            {"m": market_id}).scalar_one()


def copy_seconds(engine, n: int) -> float:
    """COPY ``n`` rows shaped like audit lines into a bare table, committed."""
    buf = io.StringIO()
    for i in range(n):
        buf.write(f"1\tc{i}\tu{i}\tred\toption_id\t{STAKE}\twon\t0.000123\t{STAKE * 2}\t{STAKE}\n")
    data = buf.getvalue()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_copy (distribution_id bigint, "
                          "commitment_id text, user_id text, option_id text, method text, "
                          "amount bigint, result text, share numeric, payout bigint, profit bigint)"))
    raw = engine.raw_connection()
    try:
        started = time.monotonic()
        with raw.cursor() as cur:
            with cur.copy("COPY bench_copy FROM STDIN") as copy:
                copy.write(data)
        raw.commit()
        return time.monotonic() - started
    finally:
        raw.close()


def peak_mb(engine, market_id: str, n: int) -> float:
    seed(engine, market_id, n)
    tracemalloc.start()
    try:
        settle_once(engine, market_id)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def run() -> dict:
    from infra import ledger
    from infra.db.engine import get_engine
    from services.markets import BATCH

    with bench_env() as env:
        engine = get_engine(env.database_url)
        small = peak_mb(engine, "bench-mem-small", SMALL)
        large = peak_mb(engine, "bench-mem-large", LARGE)
        seed(engine, "bench-100k", N)
        from bench.ledger import profile

        timed: list[float] = []
        # Statements, client CPU (Python) and time inside statements of the timed settlement.
        with statement_times(engine) as times:
            prof = profile(engine, lambda: timed.append(settle_once(engine, "bench-100k")), N)
        seconds = timed[0]
        top = ", ".join(f"{name} {t:.2f}s" for name, t in
                        sorted(times.items(), key=lambda kv: -kv[1]))
        baseline = copy_seconds(engine, N)
        with engine.connect() as conn:
            # Fresh statistics, or the planner joins a million entries row by row.
            conn.execute(text("ANALYZE accounts; ANALYZE ledger_entries"))
            check = ledger.check(conn)
            escrow = ledger.balances(conn, ["escrow:market:bench-100k"])["escrow:market:bench-100k"]
        if not check["ok"] or escrow != 0:
            raise AssertionError(f"books do not balance after the settlement: {check}, escrow {escrow}")
    return result(
        "markets",
        N / seconds,
        "commitments/s",
        N / baseline,
        f"settled {N:,} commitments ({N:,} users) in {seconds:.2f}s in one transaction; "
        f"COPY of {N:,} bare rows took {baseline:.2f}s; peak Python memory while settling "
        f"{SMALL:,} vs {LARGE:,} commitments: {small:.1f} MB vs {large:.1f} MB (flat: no "
        f"commitment passes through Python; ledger transactions of {BATCH:,} commitments). "
        f"Where the time goes: {prof['statements'] * N:,.0f} statements, "
        f"{prof['stmt_ms'] * N / 1000:.2f}s inside them (round trips + PostgreSQL: {top}), "
        f"{prof['cpu_ms'] * N / 1000:.2f}s client CPU (Python), commit {COMMIT_SECONDS[-1]:.2f}s",
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
