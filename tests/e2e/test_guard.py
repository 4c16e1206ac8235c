"""The balance guard and the alerts through real RabbitMQ, PostgreSQL and worker processes."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from domain.guard import default_limits
from domain.wallet import WalletChange
from infra import rabbit, wallets
from infra.uow import UnitOfWork
from services import wallets as wallet_service
from tests.harness import EventTap, Worker, publish_raw, send, uid, wait_until
from tests.infra.webhook_server import WebhookServer

pytestmark = pytest.mark.e2e

NGN = default_limits("bronze", "NGN")


def balance(engine, user, cur="NGN"):
    with engine.connect() as conn:
        return wallets.balances(conn, user, cur).get(cur)


def open_alert(engine, key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM alerts WHERE dedupe_key = :k AND status <> 'resolved'"),
                            {"k": key}).one_or_none()


def dead(env, request_id):
    return [d.summary() for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
            if d.summary()["request_id"] == request_id]


def test_withdrawal_over_the_daily_limit_is_refused_told_and_alerted(env, engine, worker):
    tap = EventTap(env)
    user = uid()
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=NGN.daily - 1_000,
         reference="bank")
    wait_until(lambda: balance(engine, user) == NGN.daily - 1_000)
    rid = uid("r")
    send(env, "withdraw", request_id=rid, user_id=user, currency="NGN", amount=1_001, reference="out")
    (letter,) = wait_until(lambda: dead(env, rid), what="refused withdrawal dead-lettered")
    assert "daily_limit" in letter["reason"] and "over by 1" in letter["reason"]
    assert letter["retries"] == 0
    assert balance(engine, user) == NGN.daily - 1_000
    alert = wait_until(lambda: open_alert(engine, f"limit_exceeded:{user}:NGN"))
    assert alert.severity == "warning" and alert.data["exceeded_by"] == 1
    rejected = wait_until(lambda: [e for e in tap.named("balance.change_rejected")
                                   if e["recipient"] == user], what="balance.change_rejected")
    assert rejected[0]["data"]["rule"] == "daily_limit" and rejected[0]["data"]["exceeded_by"] == 1
    raised = wait_until(lambda: [e for e in tap.seen if e["event"] == "alert.raised"
                                 and e["data"]["kind"] == "limit_exceeded"
                                 and e["data"]["data"]["user_id"] == user])
    assert raised[0]["recipient"] == "admin"
    # Exactly at the limit still passes.
    send(env, "withdraw", request_id=uid("r"), user_id=user, currency="NGN", amount=1_000, reference="out")
    wait_until(lambda: balance(engine, user) == NGN.daily - 2_000, what="withdrawal at the limit")
    tap.close()


def test_set_tier_raises_the_limits(env, engine, worker):
    user = uid()
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="USD", amount=5_000_000,
         reference="bank")
    wait_until(lambda: balance(engine, user, "USD") == 5_000_000)
    rid = uid("r")
    send(env, "deposit", request_id=rid, user_id=user, currency="USD", amount=100, reference="bank")
    (letter,) = wait_until(lambda: dead(env, rid))
    assert "daily_limit" in letter["reason"]
    send(env, "set_tier", request_id=uid("r"), user_id=user, tier="silver")
    with engine.connect():
        wait_until(lambda: _tier(engine, user) == "silver", what="tier stored")
    assert rabbit.replay("ballast.wallets", {letter["message_id"]}, env.broker_url) == 1
    wait_until(lambda: balance(engine, user, "USD") == 5_000_100, what="replayed deposit within silver")
    bad = uid("r")
    send(env, "set_tier", request_id=bad, user_id=user, tier="adamantium")
    (letter,) = wait_until(lambda: dead(env, bad))
    assert "tier" in letter["reason"]


def _tier(engine, user):
    with engine.connect() as conn:
        from infra import guard

        return guard.tier_of(conn, user)


def test_dead_letters_raise_an_alert_through_the_sweep_and_it_resolves(env, engine, worker):
    from infra import deadletter_log

    with engine.begin() as conn:  # earlier tests' dead letters are not this test's
        deadletter_log.mark_purged(conn, "ballast.wallets", "tests")
    tap = EventTap(env, "alert.*")
    publish_raw(env, "ballast.wallets", b"not json at all")
    publish_raw(env, "ballast.wallets", b"still not json")
    wait_until(lambda: rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"] == 2)
    send(env, "evaluate_alerts", request_id="schedule:alert_sweep:2026-01-01T00:01")
    alert = wait_until(lambda: open_alert(engine, "dead_letters:ballast.wallets"), what="XQ alert")
    assert alert.subject == "2 dead letter(s) of ballast.wallets neither replayed nor purged"
    assert alert.data["count"] == 2 and alert.data["queue"] == "ballast.wallets"
    wait_until(lambda: [e for e in tap.named("alert.raised")
                        if e["data"]["dedupe_key"] == "dead_letters:ballast.wallets"])
    # Taking them off RabbitMQ's queue (reading, expiry) does not hide them from the alert.
    rabbit.purge("ballast.wallets", env.broker_url)
    send(env, "evaluate_alerts", request_id="schedule:alert_sweep:2026-01-01T00:02")
    wait_until(lambda: _sweep_done(engine, "schedule:alert_sweep:2026-01-01T00:02"),
               what="the second sweep")
    assert open_alert(engine, "dead_letters:ballast.wallets") is not None
    # Purged as `ballast dlq purge` records it: the next slot resolves it.
    with engine.begin() as conn:
        deadletter_log.mark_purged(conn, "ballast.wallets", "tests")
    # The same slot again is a duplicate (nothing re-evaluated); the next slot resolves it.
    send(env, "evaluate_alerts", request_id="schedule:alert_sweep:2026-01-01T00:02")
    send(env, "evaluate_alerts", request_id="schedule:alert_sweep:2026-01-01T00:03")
    wait_until(lambda: open_alert(engine, "dead_letters:ballast.wallets") is None, what="resolved")
    wait_until(lambda: [e for e in tap.named("alert.resolved")
                        if e["data"]["dedupe_key"] == "dead_letters:ballast.wallets"])
    tap.close()


def test_new_alerts_are_posted_to_the_webhook_without_holding_up_the_step(env, engine, clean_queues):
    with WebhookServer(statuses=[500]) as hook:
        w = Worker(env, BALLAST_ALERT_WEBHOOK_URL=hook.url).start()
        try:
            user = uid()
            send(env, "withdraw", request_id=uid("r"), user_id=user, currency="NGN", amount=5_000,
                 reference="out")  # into the credit line: balance_critical
            posted = wait_until(lambda: [b for b in hook.events()
                                         if b["alert"]["data"].get("user_id") == user],
                                what="webhook POST")
            assert posted[0]["event"] == "alert.raised"
            assert posted[0]["alert"]["kind"] == "balance_critical"
            assert hook.attempts >= 2  # the first answer was a 500: retried
            assert balance(engine, user) == -5_000
        finally:
            w.stop()


def test_a_big_batch_gets_its_balance_alerts_from_the_alerts_step(env, engine, worker):
    users = [uid("big") for _ in range(150)]
    with UnitOfWork(engine=engine) as uow:
        wallet_service.apply_changes(uow, [WalletChange(u, "NGN", 5_000, "refund") for u in users],
                              counter_account="world:NGN", kind="refund")
        uow.commit()

    def critical():
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM alerts WHERE kind = 'balance_critical' "
                                     "AND status = 'open' AND data->>'user_id' = ANY(:u)"),
                                {"u": users}).scalar_one()

    wait_until(lambda: critical() == 150, what="deferred balance alerts")


def _sweep_done(engine, request_id: str) -> bool:
    """The sweep ``request_id`` evaluated its dead-letter condition (each condition claims
    its own request)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM processed_requests WHERE request_id = :r "
                                 "AND actor = 'evaluate_alerts:dead_letters'"),
                            {"r": request_id}).scalar_one() == 1
