"""The set-based settlement on real PostgreSQL: the SQL twins of the domain's rules hold
equal to them, ``ledger.post_select`` keeps every rule of a posting, and a settlement's
wallet audit is what posting its changes one by one would have written."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from domain import guard as rules
from domain.errors import InsufficientFunds, LedgerError
from domain.markets import Commitment, Outcome, distribute
from infra import guard, ledger
from infra.markets import repository
from tests.harness import uid
from tests.infra.test_markets import Run, balances, commit, fund, ledger_ok, open_market

DB = settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

amounts = st.one_of(st.integers(1, 5_000), st.integers(1, 10**15))


@DB
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), amounts), min_size=1, max_size=40),
    st.sampled_from(["a", "b", "c", None]),
    st.integers(0, 9_500),
    st.integers(100, 500),
)
def test_the_database_computes_every_line_as_the_domain(engine, placed, winner, house_bps,
                                                          creator_bps):
    commitments = [Commitment(f"c{n}", "u", o, a) for n, (o, a) in enumerate(placed)]
    expected = distribute(commitments, Outcome(winner), house_bps, creator_bps)
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT {repository.line_columns('c.amount', 'c.option_id')} "
            "FROM unnest(CAST(:a AS bigint[]), CAST(:o AS text[])) WITH ORDINALITY "
            "AS c(amount, option_id, n) ORDER BY c.n"),
            {"a": [a for _, a in placed], "o": [o for o, _ in placed],
             **repository.line_params(expected.terms)}).all()
    assert len(rows) == len(expected.lines)
    for got, ln in zip(rows, expected.lines):
        assert (got.result, got.payout, got.profit) == (ln.result, ln.payout, ln.profit)
        assert got.share == Decimal(repository.share_text(ln.share))
    t = expected.terms
    assert sum(r.payout for r in rows) + t.house_fee + t.creator_fee + expected.breakage == t.pool


@DB
@given(st.lists(st.tuples(st.integers(-10**15, 10**15), st.integers(-10**15, 10**15),
                          st.sampled_from(["bronze", "silver", "gold", "diamond"])),
                min_size=1, max_size=50))
def test_the_database_scores_risk_as_the_domain(engine, changes):
    with engine.connect() as conn:
        got = conn.execute(text(
            f"SELECT {guard.risk_sql('c.b', 'c.a', 'c.t')} AS score "
            "FROM unnest(CAST(:b AS bigint[]), CAST(:a AS bigint[]), CAST(:t AS text[])) "
            "WITH ORDINALITY AS c(b, a, t, n) ORDER BY c.n"),
            {"b": [b for b, _, _ in changes], "a": [a for _, a, _ in changes],
             "t": [t for _, _, t in changes], **guard.RISK_PARAMS}).scalars().all()
    assert got == [rules.risk_score(b, a, t) for b, a, t in changes]


# --- ledger.post_select ---------------------------------------------------------------------

def _accounts(engine, *codes: str) -> None:
    with engine.begin() as conn:
        ledger.ensure_accounts(conn, {c: "NGN" for c in codes})


def _post(engine, entries: list[tuple[int, str, str, int]], keys=None, n_txns=None):
    """post_select over literal rows (txn, code, currency, amount), committed."""
    with engine.begin() as conn:
        return _post_on(conn, entries, keys, n_txns)


def _post_on(conn, entries, keys=None, n_txns=None):
    n = n_txns if n_txns is not None else max(e[0] for e in entries)
    keys = keys or [uid("k") for _ in range(n)]
    transactions = ("SELECT CAST(x.txn AS int) AS txn, x.key, 'test' AS kind, 'memo' AS memo, "
                    "CAST(NULL AS jsonb) AS meta FROM unnest(CAST(:tn AS int[]), "
                    "CAST(:tk AS text[])) AS x(txn, key)")
    rows = ("SELECT CAST(x.txn AS int) AS txn, x.code, x.currency, x.amount, x.ord "
            "FROM unnest(CAST(:et AS int[]), CAST(:ec AS text[]), CAST(:eu AS text[]), "
            "CAST(:ea AS bigint[])) WITH ORDINALITY AS x(txn, code, currency, amount, ord)")
    return ledger.post_select(conn, transactions, rows, {
        "tn": list(range(1, n + 1)), "tk": keys,
        "et": [e[0] for e in entries], "ec": [e[1] for e in entries],
        "eu": [e[2] for e in entries], "ea": [e[3] for e in entries]})


def _count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM ledger_transactions")).scalar_one()


def test_post_select_posts_balanced_transactions_in_order(engine):
    a, b = f"world:NGN", f"user:{uid('u')}:NGN"
    _accounts(engine, a, b)
    before = balances(engine, [b])[b]
    ids = _post(engine, [(1, a, "NGN", -500), (1, b, "NGN", 500), (2, a, "NGN", -7),
                         (2, b, "NGN", 7)])
    assert len(ids) == 2 and ids[0] < ids[1]
    with engine.connect() as conn:
        assert ledger.postings_of(conn, ids[1]) == [(a, "NGN", -7), (b, "NGN", 7)]
    assert balances(engine, [b])[b] == before + 507
    ledger_ok(engine)


@pytest.mark.parametrize("entries, keys, problem", [
    ([(1, "A", "NGN", -500), (1, "B", "NGN", 499)], None, "does not balance in NGN"),
    ([(1, "A", "NGN", 0), (1, "B", "NGN", 0)], None, "zero amount"),
    ([(1, "A", "XXX", -5), (1, "B", "XXX", 5)], None, "unknown currency XXX"),
    ([(1, "A", "NGN", -5), (1, "B", "NGN", 5), (2, "A", "NGN", 0)], None, "zero amount"),
    ([(1, "A", "NGN", -5), (1, "B", "NGN", 5), (2, "A", "NGN", -5), (2, "B", "NGN", 5)],
     ["same", "same"], "idempotency key same twice"),
    ([(1, "A", "NGN", -5), (1, "NOPE", "NGN", 5)], None, "no account user:nobody"),
])
def test_post_select_refuses_what_the_domain_refuses_and_writes_nothing(engine, entries, keys,
                                                                         problem):
    a, b = "world:NGN", f"user:{uid('u')}:NGN"
    _accounts(engine, a, b)
    named = {"A": a, "B": b, "NOPE": f"user:{uid('nobody')}:NGN"}
    entries = [(t, named[c], cur, amt) for t, c, cur, amt in entries]
    with engine.begin() as conn:
        count = "SELECT count(*) FROM ledger_transactions"
        before = conn.execute(text(count)).scalar_one(), ledger.balances(conn, [b])
        with pytest.raises(LedgerError, match=problem):
            _post_on(conn, entries, keys=keys)
        # Nothing written, not even in the transaction (which stays usable).
        assert (conn.execute(text(count)).scalar_one(), ledger.balances(conn, [b])) == before


def test_post_select_refuses_a_transaction_without_two_postings(engine):
    a, b = "world:NGN", f"user:{uid('u')}:NGN"
    _accounts(engine, a, b)
    before = _count(engine)
    with pytest.raises(LedgerError, match="at least two postings"):
        _post(engine, [(1, a, "NGN", -5), (1, b, "NGN", 5)], n_txns=2)
    assert _count(engine) == before


def test_post_select_keeps_the_limits_of_accounts_that_may_not_go_negative(engine):
    escrow, user = f"escrow:market:{uid('m')}", f"user:{uid('u')}:NGN"
    _accounts(engine, escrow, user, "world:NGN")
    _post(engine, [(1, "world:NGN", "NGN", -100), (1, escrow, "NGN", 100)])
    before = _count(engine), balances(engine, [escrow, user])
    with pytest.raises(InsufficientFunds, match=f"{escrow} would go negative"):
        # the first transaction fits, the second takes the escrow below zero
        _post(engine, [(1, escrow, "NGN", -60), (1, user, "NGN", 60),
                       (2, escrow, "NGN", -60), (2, user, "NGN", 60)])
    assert (_count(engine), balances(engine, [escrow, user])) == before


def test_post_select_never_reuses_an_idempotency_key(engine):
    a, b = "world:NGN", f"user:{uid('u')}:NGN"
    _accounts(engine, a, b)
    key = uid("k")
    _post(engine, [(1, a, "NGN", -5), (1, b, "NGN", 5)], keys=[key])
    before = _count(engine)
    with pytest.raises(LedgerError, match="already used"):
        _post(engine, [(1, a, "NGN", -5), (1, b, "NGN", 5)], keys=[key])
    assert _count(engine) == before


# --- the settlement's wallet audit and transactions ------------------------------------------

@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["red", "green", "blue"]),
                       st.integers(1, 40_000)), min_size=1, max_size=12),
    st.sampled_from(["red", "green", None]),
    st.integers(1, 4),
)
def test_a_settlement_writes_the_wallet_audit_and_batches_of_changing_them_one_by_one(
        engine, placed, winner, batch):
    run = Run(engine, batch=batch)
    users = [uid("u") for _ in range(4)]
    fund(run, users)
    with engine.begin() as conn:  # one user on another tier: its risk scores differ
        conn.execute(text("INSERT INTO user_tiers (user_id, tier) VALUES (:u, 'diamond')"),
                     {"u": users[0]})
    m = open_market(run)
    ids = [commit(run, m, users[u], a, option_id=o) for u, o, a in placed]
    codes = [f"user:{u}:NGN" for u in users]
    before = balances(engine, codes)
    if winner is None:
        run("void_market", market_id=m, reason="void", resolved_by="ops")
    else:
        run("resolve_market", market_id=m, winning_option_id=winner, resolved_by="ops")
    [done] = run.settle_pending()
    expected = distribute([Commitment(c, users[u], o, a) for c, (u, o, a) in zip(ids, placed)],
                          Outcome(winner), 500, 200)
    with engine.connect() as conn:
        order = dict(conn.execute(text(
            "SELECT c.commitment_id, row_number() OVER (ORDER BY c.wallet_account_id, "
            "c.commitment_id) FROM market_commitments c WHERE c.market_id = :m"), {"m": m}).all())
        audit = conn.execute(text(
            "SELECT transaction_id, user_id, kind, user_initiated, amount, balance_before, "
            "balance_after, reason, performed_by, metadata, risk_score, tier FROM wallet_audit "
            "WHERE metadata->>'market_id' = :m AND metadata ? 'distribution_id' ORDER BY id"),
            {"m": m}).all()
        txn_of = {t: p for t, p in conn.execute(text(
            "SELECT transaction_id, purpose FROM market_distribution_transactions "
            "WHERE distribution_id = :d"), {"d": done.distribution_id}).all()}
    # What apply_changes wrote per batch: each paid commitment in lock order, running balances.
    kind = "refund" if expected.terms.refunding else "payout"
    paid = sorted((ln for ln in expected.lines if ln.payout > 0),
                  key=lambda ln: order[ln.commitment.commitment_id])
    running = dict(before)
    want = []
    for ln in paid:
        code = f"user:{ln.commitment.user_id}:NGN"
        tier = "diamond" if ln.commitment.user_id == users[0] else rules.DEFAULT_TIER
        want.append((ln.commitment.user_id, kind, False, ln.payout, running[code],
                     running[code] + ln.payout, f"market {m} {ln.result}", "system",
                     {"market_id": m, "distribution_id": done.distribution_id,
                      "commitment_id": ln.commitment.commitment_id},
                     rules.risk_score(running[code], ln.payout, tier), tier))
        running[code] += ln.payout
    assert [tuple(r)[1:] for r in audit] == want
    # One ledger transaction per batch that pays anyone, in batch order, then the fees.
    batches = sorted({(order[ln.commitment.commitment_id] - 1) // batch for ln in paid})
    payout_txns = [r.transaction_id for r in audit]
    assert sorted(set(payout_txns)) == done.transactions[:len(batches)]
    assert all(txn_of[t] == f"{kind}s" for t in set(payout_txns))
    with engine.connect() as conn:
        keys = conn.execute(text(
            "SELECT idempotency_key FROM ledger_transactions WHERE id = ANY(:t) ORDER BY id"),
            {"t": done.transactions[:len(batches)]}).scalars().all()
    assert keys == [f"market:{m}:distribution:{done.distribution_id}:batch:{b}" for b in batches]
    assert balances(engine, codes) == running
    ledger_ok(engine)


def test_set_based_events_have_distinct_uuid_event_ids_and_the_contract_envelope(engine):
    import uuid as uuidlib

    from infra import outbox

    name = f"test.{uid('e')}"
    with engine.begin() as conn:
        count, rows = outbox.add_events_select(
            conn, name, "SELECT 'u' || n AS recipient, jsonb_build_object('n', n) AS data "
            "FROM generate_series(1, :k) n", {"k": 2_500}, return_max=0)
        bodies = conn.execute(text("SELECT body FROM outbox WHERE event_name = :e ORDER BY id"),
                              {"e": name}).scalars().all()
    assert (count, rows) == (2_500, [])
    assert len({b["event_id"] for b in bodies}) == 2_500
    assert all(str(uuidlib.UUID(b["event_id"])) == b["event_id"] for b in bodies)
    assert {tuple(sorted(b)) for b in bodies} == {("data", "event", "event_id", "occurred_at",
                                                   "recipient")}
    assert [b["data"]["n"] for b in bodies] == list(range(1, 2_501))
    with engine.begin() as conn:  # few enough: the rows come back to be published now
        count, rows = outbox.add_events_select(
            conn, name, "SELECT 'v' AS recipient, jsonb_build_object('n', 1) AS data", {},
            return_max=5)
    assert count == 1 and [r.body["recipient"] for r in rows] == ["v"]
