"""The balance guard on the real database: limits, trailing windows, concurrency, audit,
balance alerts, refusals, analytics (SPEC §4)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, text

from domain.guard import DAILY_WINDOW, WEEKLY_WINDOW, Usage, default_limits
from domain.wallet import BalanceRefused, WalletChange
from infra import guard
from infra import wallets as wallet_reads
from infra.contract import parse
from infra.contract.wallets import SetTier
from infra.uow import UnitOfWork
from infra.wallets.repository import INLINE_ALERT_WALLETS
from services import guard as guard_service
from services import wallets
from tests.harness import uid

NGN = default_limits("bronze", "NGN")


def apply(engine, user, amount, kind="deposit", cur="NGN", **kw):
    """One wallet change through apply_changes, committed; returns the transaction id."""
    with UnitOfWork(engine=engine) as uow:
        txn = wallets.apply_changes(
            uow, [WalletChange(user, cur, amount, kind, reason=kw.pop("reason", ""),
                               performed_by=kw.pop("by", user), metadata=kw.pop("metadata", {}))],
            counter_account=f"world:{cur}", kind=kind, **kw)
        uow.commit()
    return txn


def refused(engine, user, amount, kind="withdrawal", cur="NGN") -> BalanceRefused:
    with pytest.raises(BalanceRefused) as exc:
        apply(engine, user, amount, kind, cur)
    return exc.value


def balance(engine, user, cur="NGN"):
    with engine.connect() as conn:
        return wallet_reads.balances(conn, user, cur).get(cur, 0)


def open_alerts(engine, user, kind=None):
    with engine.connect() as conn:
        return [a for a in conn.execute(text(
            "SELECT kind, subject, data, status FROM alerts WHERE status <> 'resolved' "
            "AND data->>'user_id' = :u ORDER BY id"), {"u": user})
            if kind is None or a.kind == kind]


def set_tier(engine, user, tier):
    with UnitOfWork(engine=engine) as uow:
        wallets.set_tier(parse(SetTier, {"request_id": uid("t"), "user_id": user, "tier": tier}),
                         uow)
        uow.commit()


def audit_times(engine, user):
    with engine.connect() as conn:
        return conn.execute(text("SELECT created_at FROM wallet_audit WHERE user_id = :u ORDER BY id"),
                            {"u": user}).scalars().all()


def check_at(engine, user, amount, now, kind="deposit", before=0):
    with UnitOfWork(engine=engine) as uow:
        guard_service.check(uow, [(WalletChange(user, "NGN", amount, kind), before)], now=now)


# --- rules at their boundaries, through the database -------------------------------------------

def test_bronze_credit_line_exactly_at_minimum_passes_one_unit_beyond_fails(engine):
    user = uid()
    apply(engine, user, NGN.min_balance, "withdrawal")
    assert balance(engine, user) == NGN.min_balance
    err = refused(engine, user, -1)
    assert (err.rule, err.exceeded_by) == ("min_balance", 1)
    assert balance(engine, user) == NGN.min_balance


def test_max_balance_exactly_at_maximum_passes_one_unit_over_fails(engine):
    user = uid()
    set_tier(engine, user, "diamond")  # daily limit above bronze's max balance
    lim = default_limits("diamond", "NGN")
    # reach the maximum with a system payout (never refused), then try a deposit
    apply(engine, user, lim.max_balance - 10, "payout")
    apply(engine, user, 10, "deposit")
    assert balance(engine, user) == lim.max_balance
    err = refused(engine, user, 1, "deposit")
    assert (err.rule, err.exceeded_by) == ("max_balance", 1)


def test_daily_limit_exactly_at_limit_passes_one_unit_over_fails(engine):
    user = uid()
    apply(engine, user, NGN.daily - 300, "deposit")
    apply(engine, user, -300, "withdrawal")  # magnitudes add up: exactly at the limit
    err = refused(engine, user, -1)
    assert (err.rule, err.exceeded_by, err.limit) == ("daily_limit", 1, NGN.daily)
    assert balance(engine, user) == NGN.daily - 600


def test_system_changes_do_not_count_toward_the_limits_and_pass_beyond_them(engine):
    user = uid()
    apply(engine, user, NGN.daily * 3, "payout")
    apply(engine, user, -NGN.daily * 5, "reversal")  # far below the credit line too
    apply(engine, user, NGN.daily, "deposit")  # the whole daily limit is still free
    assert balance(engine, user) == -NGN.daily


def test_tier_changes_the_limits(engine):
    user = uid()
    apply(engine, user, NGN.daily, "deposit")
    assert refused(engine, user, 1, "deposit").rule == "daily_limit"
    set_tier(engine, user, "silver")
    silver = default_limits("silver", "NGN")
    apply(engine, user, silver.daily - NGN.daily, "deposit")
    assert refused(engine, user, 1, "deposit").rule == "daily_limit"
    with engine.connect() as conn:
        assert guard.tier_of(conn, user) == "silver"
        assert guard.tier_of(conn, uid()) == "bronze"


def test_limits_are_configurable(engine):
    cur = "TOKEN"
    user = uid()
    set_tier(engine, user, "gold")
    with engine.begin() as conn:
        custom = default_limits("gold", cur)
        from dataclasses import replace

        guard.set_limits(conn, replace(custom, daily=1_234), by="test")
    try:
        apply(engine, user, 1_234, "deposit", cur)
        err = refused(engine, user, 1, "deposit", cur)
        assert (err.rule, err.limit) == ("daily_limit", 1_234)
    finally:
        with engine.begin() as conn:
            guard.set_limits(conn, default_limits("gold", cur), by="test")


# --- trailing windows ---------------------------------------------------------------------------

def test_daily_window_change_just_inside_24h_counts_exactly_24h_old_does_not(engine):
    user = uid()
    apply(engine, user, NGN.daily, "deposit")
    (t,) = audit_times(engine, user)
    with pytest.raises(BalanceRefused) as exc:
        check_at(engine, user, 1, t + timedelta(hours=24) - timedelta(microseconds=1))
    assert exc.value.rule == "daily_limit"
    check_at(engine, user, NGN.daily, t + timedelta(hours=24))  # the whole day is free again


def test_the_lock_context_sums_the_windows_the_domain_states(engine):
    """``wallet_lock_context`` (the hot path) binds ``domain.guard``'s windows: at each
    boundary it sums what ``usage`` sums."""
    user = uid()
    apply(engine, user, 123_456, "deposit")
    (t,) = audit_times(engine, user)
    tick = timedelta(microseconds=1)
    change = WalletChange(user, "NGN", 1, "deposit")
    for at in (t + DAILY_WINDOW - tick, t + DAILY_WINDOW, t + WEEKLY_WINDOW - tick,
               t + WEEKLY_WINDOW):
        with UnitOfWork(engine=engine) as uow:
            _, context = uow.wallets.lock({change.account: "NGN", "world:NGN": "NGN"}, [change],
                                          with_context=True, now=at)
            expected = uow.guard.usage([(user, "NGN")], at).get((user, "NGN")) or Usage()
            assert context.used[(user, "NGN")] == expected, at

def test_daily_window_is_trailing_not_the_calendar_day(engine):
    user = uid()
    apply(engine, user, NGN.daily, "deposit")
    (t,) = audit_times(engine, user)
    # Past the next midnight, but within 24 h: still counted.
    next_midnight = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with pytest.raises(BalanceRefused):
        check_at(engine, user, 1, next_midnight + timedelta(minutes=1))


def test_windows_hold_a_change_until_exactly_24h_and_7d_old(engine):
    user = uid()
    apply(engine, user, 123_456, "deposit")
    (t,) = audit_times(engine, user)
    tick = timedelta(microseconds=1)
    with engine.connect() as conn:
        def used(at):
            return guard.usage(conn, [(user, "NGN")], at).get((user, "NGN"))

        assert used(t + timedelta(hours=24) - tick) == Usage(123_456, 123_456)
        assert used(t + timedelta(hours=24)) == Usage(0, 123_456)
        assert used(t + timedelta(days=6)) == Usage(0, 123_456)
        assert used(t + timedelta(days=7) - tick) == Usage(0, 123_456)
        assert used(t + timedelta(days=7)) is None


def test_weekly_limit_refuses_across_days(engine):
    """Four full days at the daily limit fill the bronze week (4 × 50,000 = 200,000)."""
    user = uid()
    apply(engine, user, NGN.daily, "deposit")
    (t,) = audit_times(engine, user)
    # Pretend three more full days happened: rows written at t − 1 d, t − 2 d, t − 3 d.
    with engine.begin() as conn:
        txn = conn.execute(text("SELECT transaction_id FROM wallet_audit WHERE user_id = :u"),
                           {"u": user}).scalar_one()
        for d in (1, 2, 3):
            conn.execute(text(
                "INSERT INTO wallet_audit (transaction_id, user_id, currency, kind, user_initiated, "
                "amount, balance_before, balance_after, risk_score, tier, created_at) VALUES "
                "(:txn, :u, 'NGN', 'deposit', true, :a, 0, :a, 0, 'bronze', :at)"),
                {"txn": txn, "u": user, "a": NGN.daily, "at": t - timedelta(days=d)})
    later = t + timedelta(days=1)  # daily window clear; week holds 4 × daily (t−3 d … t)
    with pytest.raises(BalanceRefused) as exc:
        check_at(engine, user, 1, later)
    assert (exc.value.rule, exc.value.exceeded_by) == ("weekly_limit", 1)
    # Once the oldest day (t − 3 d) is exactly 7 d old it drops out: a full day is free.
    check_at(engine, user, NGN.daily, t - timedelta(days=3) + timedelta(days=7))


# --- concurrency --------------------------------------------------------------------------------

def test_concurrent_changes_on_one_wallet_never_jointly_exceed_the_daily_limit(engine):
    user = uid()
    step = NGN.daily // 5
    results: list[str] = []
    barrier = threading.Barrier(12)

    def one(i):
        barrier.wait()
        try:
            apply(engine, user, step, "deposit")
            results.append("ok")
        except BalanceRefused as err:
            results.append(err.rule)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["daily_limit"] * 7 + ["ok"] * 5
    with engine.connect() as conn:
        used = conn.execute(text("SELECT sum(abs(amount)) FROM wallet_audit WHERE user_id = :u"),
                            {"u": user}).scalar_one()
        assert used == NGN.daily
        assert conn.execute(text("SELECT count(*) FROM wallet_audit WHERE user_id = :u"),
                            {"u": user}).scalar_one() == 5


def test_concurrent_withdrawals_never_pass_the_credit_line(engine):
    user = uid()
    set_tier(engine, user, "diamond")  # daily limit 500,000 NGN: only the minimum binds
    lim = default_limits("diamond", "NGN")
    step = -lim.min_balance // 4
    results: list[str] = []
    barrier = threading.Barrier(8)

    def one():
        barrier.wait()
        try:
            apply(engine, user, -step, "withdrawal")
            results.append("ok")
        except BalanceRefused as err:
            results.append(err.rule)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["min_balance"] * 4 + ["ok"] * 4
    assert balance(engine, user) == lim.min_balance


# --- audit trail --------------------------------------------------------------------------------

def test_every_change_is_audited_with_before_after_who_why_and_risk(engine):
    user = uid()
    apply(engine, user, 200_000, "deposit", reason="bank", by="app", metadata={"ref": "r1"})
    apply(engine, user, -150_000, "withdrawal", reason="to bank")
    apply(engine, user, 10_000, "payout", reason="market m1", by="system")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT kind, user_initiated, amount, balance_before, balance_after, reason, performed_by, "
            "metadata, risk_score, tier FROM wallet_audit WHERE user_id = :u ORDER BY id"),
            {"u": user}).all()
    assert [tuple(r) for r in rows] == [
        ("deposit", True, 200_000, 0, 200_000, "bank", "app", {"ref": "r1"}, 60, "bronze"),
        ("withdrawal", True, -150_000, 200_000, 50_000, "to bank", user, None, 30, "bronze"),
        ("payout", False, 10_000, 50_000, 60_000, "market m1", "system", None, 10, "bronze"),
    ]


def test_audit_trail_is_append_only(engine):
    user = uid()
    apply(engine, user, 100, "deposit")
    with pytest.raises(Exception, match="append-only"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE wallet_audit SET amount = 1 WHERE user_id = :u"), {"u": user})


def test_record_is_set_based_for_many_system_changes(engine):
    """A settlement's 5,000 payouts are audited with a handful of statements, not 5,000,
    and their balance alerts are handed to the evaluate_balance_alerts step in chunks."""
    users = [uid("bulk") for _ in range(5_000)]
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    with UnitOfWork(engine=engine) as uow:
        event.listen(uow.conn, "before_cursor_execute", count)
        txn = wallets.apply_changes(uow, [WalletChange(u, "USD", 50_000, "payout") for u in users],
                                    counter_account="world:USD", kind="payout")
        event.remove(uow.conn, "before_cursor_execute", count)
        uow.commit()
    assert len(statements) < 20, statements

    def warnings():
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM alerts WHERE kind = 'balance_warning' "
                                     "AND status = 'open' AND data->>'user_id' = ANY(:u)"),
                                {"u": users}).scalar_one()

    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM wallet_audit WHERE transaction_id = :t"),
                         {"t": txn}).scalar_one()
        handed = conn.execute(text("SELECT body FROM outbox WHERE kind = 'message' "
                                   "AND body->>'actor_name' = 'evaluate_balance_alerts' "
                                   "AND CAST(body->'kwargs'->>'transaction_id' AS bigint) = :t"),
                              {"t": txn}).scalars().all()
    assert n == 5_000
    assert len(handed) == 1 and handed[0]["queue_name"] == "ballast.step.alerts"
    assert warnings() == 0  # not inline
    after, chunks = None, 0
    while True:
        with UnitOfWork(engine=engine) as uow:
            after = uow.guard.alerts_of_chunk(txn, after, limit=1_200)
            uow.commit()
        chunks += 1
        if after is None:
            break
    assert chunks == 5
    assert warnings() == 5_000  # $500.00 is below the $1,000.00 warning threshold
    with UnitOfWork(engine=engine) as uow:  # a repeated chunk changes nothing
        uow.guard.alerts_of_chunk(txn, None, limit=1_200)
        uow.commit()
    assert warnings() == 5_000


def test_a_few_wallets_get_their_balance_alerts_inline(engine):
    users = [uid() for _ in range(INLINE_ALERT_WALLETS)]
    with UnitOfWork(engine=engine) as uow:
        wallets.apply_changes(uow, [WalletChange(u, "USD", 50_000, "refund") for u in users],
                              counter_account="world:USD", kind="refund")
        uow.commit()
    assert all(open_alerts(engine, u, "balance_warning") for u in users)


# --- balance alerts -----------------------------------------------------------------------------

def test_balance_warning_then_critical_then_resolved(engine):
    user = uid()
    apply(engine, user, 150_000, "deposit")  # 1,500.00: fine
    assert open_alerts(engine, user) == []
    apply(engine, user, -50_001, "withdrawal")  # 999.99: warning
    assert [a.kind for a in open_alerts(engine, user)] == ["balance_warning"]
    apply(engine, user, -89_999, "withdrawal")  # exactly 100.00: a warning (and a big drop)
    assert [a.kind for a in open_alerts(engine, user)] == ["balance_warning", "significant_drop"]
    apply(engine, user, -1, "withdrawal")  # 99.99: critical, the warning resolved
    assert [a.kind for a in open_alerts(engine, user)] == ["significant_drop", "balance_critical"]
    apply(engine, user, 90_001, "payout")  # exactly 1,000.00: everything clears
    assert open_alerts(engine, user) == []


def test_one_open_alert_per_user_and_kind(engine):
    user = uid()
    apply(engine, user, 50_000, "deposit")
    apply(engine, user, -1_000, "withdrawal")
    apply(engine, user, -1_000, "withdrawal")
    warnings = open_alerts(engine, user, "balance_warning")
    assert len(warnings) == 1
    assert warnings[0].data["balance"] == 48_000  # refreshed, not duplicated


def test_significant_drop_raised_on_more_than_half_and_resolved_on_recovery(engine):
    user = uid()
    apply(engine, user, 1_000_000, "deposit")
    apply(engine, user, -500_000, "withdrawal")  # exactly half: not significant
    assert open_alerts(engine, user, "significant_drop") == []
    apply(engine, user, -250_001, "withdrawal")  # 500,000 -> 249,999
    (drop,) = open_alerts(engine, user, "significant_drop")
    assert drop.data["balance_before"] == 500_000 and drop.data["balance"] == 249_999
    apply(engine, user, 200_000, "deposit")
    assert open_alerts(engine, user, "significant_drop")  # not back yet
    apply(engine, user, 50_001, "deposit")
    assert open_alerts(engine, user, "significant_drop") == []


def test_no_significant_drop_from_a_zero_balance(engine):
    user = uid()
    apply(engine, user, -500_000, "withdrawal")  # from 0 into the credit line
    kinds = [a.kind for a in open_alerts(engine, user)]
    assert kinds == ["balance_critical"]


def test_alerts_are_per_wallet_currency(engine):
    user = uid()
    apply(engine, user, 50_000, "deposit", "NGN")  # NGN warning
    apply(engine, user, 500_000, "deposit", "USD")  # USD fine: does not clear the NGN one
    assert [(a.kind, a.data["currency"]) for a in open_alerts(engine, user)] == [
        ("balance_warning", "NGN")]


def test_refusal_publishes_event_raises_limit_exceeded_and_changes_nothing(engine):
    user = uid()
    apply(engine, user, NGN.daily, "deposit")
    with engine.connect() as conn:
        outbox_before = conn.execute(text("SELECT max(id) FROM outbox")).scalar_one()
    err = refused(engine, user, -5)
    assert err.rule == "daily_limit"
    assert balance(engine, user) == NGN.daily
    (alert,) = open_alerts(engine, user, "limit_exceeded")
    assert alert.data["rule"] == "daily_limit" and alert.data["exceeded_by"] == 5
    refused(engine, user, -7)  # again: still one open alert, refreshed
    (alert,) = open_alerts(engine, user, "limit_exceeded")
    assert alert.data["exceeded_by"] == 7
    with engine.connect() as conn:
        events = conn.execute(text(
            "SELECT body FROM outbox WHERE id > :id AND event_name = 'balance.change_rejected' "
            "AND recipient = :u ORDER BY id"), {"id": outbox_before, "u": user}).scalars().all()
        audited = conn.execute(text("SELECT count(*) FROM wallet_audit WHERE user_id = :u"),
                               {"u": user}).scalar_one()
    assert [e["data"]["exceeded_by"] for e in events] == [5, 7]
    assert events[0]["data"]["rule"] == "daily_limit" and "over by 5" in events[0]["data"]["reason"]
    assert audited == 1


def test_min_balance_refusal_publishes_the_event_but_raises_no_limit_alert(engine):
    user = uid()
    err = refused(engine, user, NGN.min_balance - 1)
    assert err.rule == "min_balance"
    assert open_alerts(engine, user) == []
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM outbox WHERE event_name = 'balance.change_rejected' "
                              "AND recipient = :u"), {"u": user}).scalar_one()
    assert n == 1


def test_limit_exceeded_resolves_when_its_window_has_passed(engine):
    user = uid()
    apply(engine, user, NGN.daily, "deposit")
    refused(engine, user, 1, "deposit")
    assert open_alerts(engine, user, "limit_exceeded")
    with UnitOfWork(engine=engine) as uow:
        guard.balance_alert_expiry(uow)
        uow.commit()
    assert open_alerts(engine, user, "limit_exceeded")  # still inside the window
    with engine.begin() as conn:
        conn.execute(text("UPDATE alerts SET data = jsonb_set(data, '{clears_at}', to_jsonb(CAST(:t AS text))) "
                          "WHERE kind = 'limit_exceeded' AND data->>'user_id' = :u"),
                     {"t": (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat(), "u": user})
    with UnitOfWork(engine=engine) as uow:
        guard.balance_alert_expiry(uow)
        uow.commit()
    assert open_alerts(engine, user, "limit_exceeded") == []


# --- reports ------------------------------------------------------------------------------------

def test_limits_report_shows_what_the_windows_hold(engine):
    user = uid()
    apply(engine, user, 300_000, "deposit")
    apply(engine, user, -100_000, "withdrawal")
    apply(engine, user, 5_000, "refund")
    with engine.connect() as conn:
        rep = guard.limits_report(conn, user, ["NGN"])["NGN"]
        hist = guard.history(conn, user)
    assert rep["daily_used"] == 400_000 and rep["weekly_used"] == 400_000
    assert rep["daily_limit"] == NGN.daily and rep["min_balance"] == NGN.min_balance
    assert [h["kind"] for h in hist] == ["refund", "withdrawal", "deposit"]
    assert hist[0]["balance_after"] == 205_000


def test_analytics_against_a_hand_computed_history(engine):
    user = uid()
    apply(engine, user, 1_000_000, "deposit")  # before the period
    with engine.connect() as conn:
        start = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    for amount, kind in [(500_000, "deposit"), (-200_000, "withdrawal"), (100_000, "payout"),
                         (-300_000, "wager")]:
        apply(engine, user, amount, kind)
    with engine.connect() as conn:
        end = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    apply(engine, user, 7, "deposit")  # after the period
    with engine.connect() as conn:
        got = guard.analytics(conn, start, end, user_id=user)
        platform = guard.analytics(conn, start, end)
    ngn = got["currencies"]["NGN"]
    assert (ngn["start_balance"], ngn["end_balance"], ngn["net_change"]) == (1_000_000, 1_100_000, 100_000)
    assert ngn["change_percent"] == 10.0 and ngn["change_bps"] == 1000
    assert ngn["totals_by_type"] == {"deposit": 500_000, "payout": 100_000, "wager": -300_000,
                                     "withdrawal": -200_000}
    # |changes| = 500k, 200k, 100k, 300k: mean 275k; variance = (225² + 75² + 175² + 25²)k²/4
    # = 21,875,000,000 -> σ = 147,901.3...
    assert ngn["volatility"] == 147_901
    assert ngn["changes"] == 4 and ngn["trend"] == "up" and ngn["risk_level"] == "low"
    assert platform["currencies"]["NGN"]["changes"] >= 4
    assert platform["user_id"] is None


def test_one_statement_posting_refused_by_the_ledger_writes_nothing_and_ids_match(engine):
    """``services.guard.post_and_record``: when the posting is refused (treasury may not go
    negative), no audit line, event or alert is left; when it is posted, the stored event
    and alert carry the transaction's id, as the published ones do."""
    from domain.errors import InsufficientFunds

    user = uid("onestmt")
    too_much = 10**15  # more than any test's treasury holds; a system change: no guard limit
    with UnitOfWork(engine=engine) as uow:
        with pytest.raises(InsufficientFunds):
            wallets.apply_changes(uow, [WalletChange(user, "NGN", too_much, "payout",
                                                     performed_by="ops")],
                                  counter_account="treasury:NGN", kind="payout")
        counts = uow.conn.execute(text(
            "SELECT (SELECT count(*) FROM wallet_audit WHERE user_id = :u) AS audit, "
            "(SELECT count(*) FROM outbox WHERE recipient = :u) AS events, "
            "(SELECT count(*) FROM alerts WHERE data->>'user_id' = :u) AS alerts"),
            {"u": user}).one()
        assert tuple(counts) == (0, 0, 0)
    txn = apply(engine, user, 50)  # below the critical threshold: balance_critical
    with engine.connect() as conn:
        ev = conn.execute(text("SELECT body FROM outbox WHERE recipient = :u "
                               "AND event_name = 'wallet.changed'"), {"u": user}).scalar_one()
        audit = conn.execute(text("SELECT transaction_id FROM wallet_audit WHERE user_id = :u"),
                             {"u": user}).scalar_one()
    assert ev["data"]["transaction_id"] == txn == audit
    assert [a.data["transaction_id"] for a in open_alerts(engine, user, "balance_critical")] == [txn]
