"""The alert store, its webhook and the alert sweep's conditions, on the real services."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from domain.errors import NotFound, Refused
from infra import alerts, outbox, rabbit
from services import conditions
from infra.alerts import Alert
from infra.settings import get_settings
from infra.uow import UnitOfWork
from tests.harness import amqp, purge_all, uid
from tests.infra.webhook_server import WebhookServer


def raise_one(engine, key, subject="s", data=None, kind="test_kind", severity="warning"):
    with UnitOfWork(engine=engine) as uow:
        got = alerts.raise_alert(uow, kind=kind, severity=severity, subject=subject,
                                 dedupe_key=key, data=data)
        uow.commit()
    return got


def resolve(engine, key):
    with UnitOfWork(engine=engine) as uow:
        got = alerts.resolve_alert(uow, key)
        uow.commit()
    return got


def rows(engine, key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM alerts WHERE dedupe_key = :k ORDER BY id"),
                            {"k": key}).all()


def events_for(engine, key, name):
    with engine.connect() as conn:
        return conn.execute(text("SELECT body FROM outbox WHERE event_name = :n "
                                 "AND body->'data'->>'dedupe_key' = :k ORDER BY id"),
                            {"n": name, "k": key}).scalars().all()


@pytest.fixture
def webhook_url(monkeypatch):
    """Point BALLAST_ALERT_WEBHOOK_URL at a local server for the test."""

    def use(url):
        monkeypatch.setenv("BALLAST_ALERT_WEBHOOK_URL", url)
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("BALLAST_ALERT_WEBHOOK_URL", raising=False)
    get_settings.cache_clear()


# --- the store ----------------------------------------------------------------------------------

def test_one_open_alert_per_dedupe_key_refreshed_not_duplicated(engine):
    key = uid("k")
    first = raise_one(engine, key, "3 things", {"n": 3})
    assert first is not None
    assert raise_one(engine, key, "4 things", {"n": 4}) is None
    (row,) = rows(engine, key)
    assert (row.id, row.subject, row.data, row.status) == (first, "4 things", {"n": 4}, "open")
    assert len(events_for(engine, key, "alert.raised")) == 1


def test_resolved_alert_can_be_raised_again_as_a_new_one(engine):
    key = uid("k")
    first = raise_one(engine, key)
    assert resolve(engine, key) is True
    assert resolve(engine, key) is False  # nothing open any more
    second = raise_one(engine, key)
    assert second not in (None, first)
    assert [r.status for r in rows(engine, key)] == ["resolved", "open"]
    assert rows(engine, key)[0].resolved_at is not None
    assert len(events_for(engine, key, "alert.raised")) == 2
    assert len(events_for(engine, key, "alert.resolved")) == 1


def test_acknowledge_records_who_and_when_and_keeps_it_deduplicating(engine):
    key = uid("k")
    alert_id = raise_one(engine, key)
    with engine.begin() as conn:
        acked = alerts.acknowledge(conn, alert_id, "ada")
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "ada"
    assert acked["acknowledged_at"] is not None
    assert raise_one(engine, key) is None  # still the one alert for this key
    with engine.begin() as conn, pytest.raises(Refused, match="acknowledged, not open"):
        alerts.acknowledge(conn, alert_id, "bob")
    assert resolve(engine, key) is True  # the condition clearing resolves it
    with engine.begin() as conn, pytest.raises(NotFound):
        alerts.acknowledge(conn, 10**12, "ada")


def test_resolve_all_except_keeps_the_conditions_that_still_hold(engine):
    prefix = uid("p") + ":"
    for q in "abc":
        raise_one(engine, prefix + q)
    with UnitOfWork(engine=engine) as uow:
        assert alerts.resolve_all_except(uow, prefix, [prefix + "b"]) == 2
        uow.commit()
    assert [rows(engine, prefix + q)[-1].status for q in "abc"] == ["resolved", "open", "resolved"]


def test_unknown_severity_is_refused():
    with pytest.raises(ValueError):
        Alert("k", "apocalyptic", "s", "key")


def test_many_alerts_in_one_statement_leave_their_events_to_the_sweeper(engine):
    prefix = uid("bulk")
    with UnitOfWork(engine=engine) as uow:
        new = alerts.raise_alerts(uow, [Alert("bulk", "info", f"n{i}", f"{prefix}:{i}", {"i": i})
                                        for i in range(outbox.PUBLISH_INLINE_MAX + 1)])
        assert uow._rows == []  # not published right after commit
        uow.commit()
    assert len(new) == outbox.PUBLISH_INLINE_MAX + 1
    with engine.connect() as conn:
        pending = conn.execute(text(
            "SELECT count(*) FROM outbox WHERE event_name = 'alert.raised' AND published_at IS NULL "
            "AND body->'data'->>'dedupe_key' LIKE :p"), {"p": prefix + ":%"}).scalar_one()
    assert pending == outbox.PUBLISH_INLINE_MAX + 1


def test_resolving_writes_the_same_event_document_as_announcing(engine):
    """``resolve_alerts`` resolves and writes each ``alert.resolved`` in one statement (the
    database builds the event): the document is the one ``announce_resolved`` writes, it
    is published after commit, and an alert already resolved gets no second event."""
    key = uid("res")
    alert_id = raise_one(engine, key, subject="low", data={"user_id": "u1", "n": 2},
                         kind="test_res", severity="critical")
    with UnitOfWork(engine=engine) as uow:
        assert alerts.resolve_alerts(uow, [key, uid("absent")], note="back to normal") == [alert_id]
        sql_rows = list(uow._rows)
        uow.commit()
    with UnitOfWork(engine=engine) as uow:  # the reference: announce_resolved over the same row
        row = uow.conn.execute(text("SELECT id, kind, severity, subject, dedupe_key, data "
                                    "FROM alerts WHERE id = :i"), {"i": alert_id}).one()
        alerts.announce_resolved(uow, [row], note="back to normal")
        reference = list(uow._rows)
        assert alerts.resolve_alerts(uow, [key]) == []  # resolved already: nothing, no event
        assert uow._rows == reference
    assert [r.routing_key for r in sql_rows] == ["alert.resolved"]
    got, want = sql_rows[0].body, reference[0].body
    assert set(got) == set(want) == {"event", "event_id", "occurred_at", "recipient", "data"}
    assert (got["event"], got["recipient"], got["data"]) == (want["event"], want["recipient"],
                                                             want["data"])
    assert got["data"] == {"alert_id": alert_id, "kind": "test_res", "severity": "critical",
                           "subject": "low", "dedupe_key": key, "data": {"user_id": "u1", "n": 2},
                           "note": "back to normal"}
    datetime.fromisoformat(got["occurred_at"])
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT body FROM outbox WHERE id = :i"),
                              {"i": sql_rows[0].id}).scalar_one()
    assert stored == got


# --- the webhook ----------------------------------------------------------------------------------

def pending_deliveries(engine, alert_id):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM alert_deliveries WHERE alert_id = :a ORDER BY id"),
                            {"a": alert_id}).all()


def test_no_webhook_configured_writes_no_delivery(engine):
    assert get_settings().alert_webhook_url is None
    alert_id = raise_one(engine, uid("k"))
    assert pending_deliveries(engine, alert_id) == []


def test_new_and_resolved_alerts_are_posted_as_json(engine, webhook_url):
    with WebhookServer() as hook:
        webhook_url(hook.url)
        key = uid("k")
        alert_id = raise_one(engine, key, "queue on fire", {"queue": "q"}, severity="critical")
        resolve(engine, key)
        (queued,) = [r for r in _outbox_messages(engine) if r["actor_name"] == "deliver_alert_webhooks"][-1:]
        assert queued["queue_name"] == "ballast.step.webhooks"
        got = alerts.deliver_pending(engine, sleep=lambda s: None)
        assert got == {"delivered": 2, "failed": 0}
        bodies = [b for b in hook.events() if b["alert"]["alert_id"] == alert_id]
        assert [b["event"] for b in bodies] == ["alert.raised", "alert.resolved"]
        assert bodies[0]["alert"]["subject"] == "queue on fire"
        assert bodies[0]["alert"]["severity"] == "critical"
        assert bodies[0]["alert"]["data"] == {"queue": "q"}
        headers = [r["headers"] for r in hook.received if r["body"]["alert"]["alert_id"] == alert_id]
        assert headers[0]["Idempotency-Key"].startswith("ballast-alert-delivery-")
        assert headers[0]["Content-Type"] == "application/json"
        assert {d.status for d in pending_deliveries(engine, alert_id)} == {"delivered"}
        assert alerts.deliver_pending(engine) == {"delivered": 0, "failed": 0}  # never twice


def test_webhook_failures_are_retried_until_delivered(engine, webhook_url):
    with WebhookServer(statuses=[500, 503]) as hook:
        webhook_url(hook.url)
        alert_id = raise_one(engine, uid("k"))
        waits = []
        assert alerts.deliver_pending(engine, sleep=waits.append) == {"delivered": 1, "failed": 0}
        assert hook.attempts == 3 and waits == [0.5, 1.0]
        (row,) = pending_deliveries(engine, alert_id)
        assert (row.status, row.attempts) == ("delivered", 3)


def test_a_dead_webhook_backs_off_keeps_order_and_delivers_later(engine, webhook_url):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    webhook_url(dead_url)
    first, second = raise_one(engine, uid("k")), raise_one(engine, uid("k"))
    got = alerts.deliver_pending(engine, sleep=lambda s: None)
    assert got == {"delivered": 0, "failed": 1}
    (row1,), (row2,) = pending_deliveries(engine, first), pending_deliveries(engine, second)
    assert (row1.status, row1.attempts) == ("pending", 3) and "ConnectError" in row1.last_error
    assert row2.attempts == 0  # not hammered while the receiver is down
    assert row1.next_attempt_at > datetime.now(timezone.utc)
    with WebhookServer() as hook:
        webhook_url(hook.url)
        with engine.begin() as conn:  # time passes
            conn.execute(text("UPDATE alert_deliveries SET next_attempt_at = now() "
                              "WHERE status = 'pending'"))
        assert alerts.deliver_pending(engine, sleep=lambda s: None)["delivered"] >= 2
        ids = [b["alert"]["alert_id"] for b in hook.events()]
        assert ids.index(first) < ids.index(second)


def test_stuck_deliveries_raise_webhook_failing_and_expire(engine, webhook_url):
    webhook_url("http://127.0.0.1:9/never")
    alert_id = raise_one(engine, uid("k"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alert_deliveries SET created_at = now() - interval '25 hours' "
                          "WHERE alert_id = :a"), {"a": alert_id})
    with UnitOfWork(engine=engine) as uow:
        alerts.alert_webhooks(uow)
        uow.commit()
    assert pending_deliveries(engine, alert_id)[0].status == "expired"
    (failing,) = [r for r in rows(engine, "webhook_failing") if r.status != "resolved"]
    assert "given up" in failing.subject
    with engine.begin() as conn:  # leave nothing pending for the other tests
        conn.execute(text("UPDATE alert_deliveries SET status = 'expired' WHERE status = 'pending'"))
    with UnitOfWork(engine=engine) as uow:
        alerts.alert_webhooks(uow)
        uow.commit()
    assert all(r.status == "resolved" for r in rows(engine, "webhook_failing"))


def dead_letter(env, queue, body=b"{}"):
    conn = amqp(env)
    try:
        conn.channel().basic_publish("", f"{queue}.XQ", body)
    finally:
        conn.close()


def _outbox_messages(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT body FROM outbox WHERE kind = 'message' ORDER BY id")).scalars().all()


# --- the sweep's conditions -------------------------------------------------------------------------

def test_one_failing_condition_does_not_stop_the_others_and_is_itself_an_alert(engine):
    ran = []
    key = uid("cond")

    def good(uow):
        ran.append("good")
        alerts.raise_alert(uow, kind="test", severity="info", subject="good ran", dedupe_key=key)

    def bad(uow):
        ran.append("bad")
        alerts.raise_alert(uow, kind="test", severity="info", subject="never", dedupe_key=key + "x")
        raise RuntimeError("broken probe")

    name = uid("bad")
    rid = uid("sweep")
    got = conditions.evaluate({name: bad, "good": good}, request_id=rid, engine=engine)
    assert got == {name: "failed", "good": "ok"}
    assert rows(engine, key)[0].status == "open"
    assert rows(engine, key + "x") == []  # the failing condition's work rolled back
    (failed,) = rows(engine, f"alert_condition_failed:{name}")
    assert "broken probe" in failed.subject and failed.status == "open"
    # The same request again: what ran is not run twice; what failed is tried again.
    got = conditions.evaluate({name: lambda uow: None, "good": good}, request_id=rid, engine=engine)
    assert got == {name: "ok", "good": "duplicate"}
    assert rows(engine, f"alert_condition_failed:{name}")[0].status == "resolved"
    assert ran == ["bad", "good"]


def _logged_dead_letter(engine, queue: str) -> str:
    """A dead letter as the workers record it in the durable log (table dead_letters)."""
    from infra import deadletter_log
    from infra.middleware.deadletters import dead_letter_info

    mid = uid("m")
    body = {"queue_name": queue, "actor_name": "deposit", "args": [], "message_id": mid,
            "kwargs": {"request_id": uid("r")}, "options": {}, "message_timestamp": 0}
    with engine.begin() as conn:
        deadletter_log.record_in(conn, body, dead_letter_info("refused: test", "refused",
                                                              "Refused", "", 0))
    return mid


def test_dead_letter_condition_counts_the_durable_log_and_resolves_on_purge(env, engine, clean_queues):
    from infra import deadletter_log
    from infra.broker import build_broker, declare_topology

    broker = build_broker(env.broker_url)
    declare_topology(broker)
    broker.close()

    with engine.begin() as conn:  # earlier tests' dead letters are not this test's
        conn.execute(text("UPDATE dead_letters SET status = 'purged', resolved_at = now(), "
                          "resolved_by = 'tests' WHERE status = 'dead'"))
    for _ in range(2):
        _logged_dead_letter(engine, "ballast.wallets")
    _logged_dead_letter(engine, "ballast.markets")
    with UnitOfWork(engine=engine) as uow:
        alerts.dead_letters(uow)
        uow.commit()
    (wallet,) = [r for r in rows(engine, "dead_letters:ballast.wallets") if r.status == "open"]
    assert wallet.subject == "2 dead letter(s) of ballast.wallets neither replayed nor purged"
    assert {k: wallet.data[k] for k in ("queue", "xq", "count")} == {
        "queue": "ballast.wallets", "xq": "ballast.wallets.XQ", "count": 2}
    assert [r.status for r in rows(engine, "dead_letters:ballast.markets")] == ["open"]
    # Emptying RabbitMQ's copy (reading them, or their TTL) hides nothing: still open.
    dead_letter(env, "ballast.wallets")
    purge_all(env)
    with engine.begin() as conn:
        deadletter_log.mark_purged(conn, "ballast.markets", "tests")
    _logged_dead_letter(engine, "ballast.wallets")
    with UnitOfWork(engine=engine) as uow:
        alerts.dead_letters(uow)
        uow.commit()
    (wallet,) = [r for r in rows(engine, "dead_letters:ballast.wallets") if r.status == "open"]
    assert wallet.subject.startswith("3 dead letter(s)")  # same alert, count refreshed
    assert [r.status for r in rows(engine, "dead_letters:ballast.markets")] == ["resolved"]
    with engine.begin() as conn:
        deadletter_log.mark_purged(conn, "ballast.wallets", "tests")
    # What only RabbitMQ dead-lettered (no record: a nack, a delivery limit) counts too.
    for _ in range(2):
        dead_letter(env, "ballast.markets", b'{"garbage": true}')
    with UnitOfWork(engine=engine) as uow:
        alerts.dead_letters(uow)
        uow.commit()
    assert all(r.status == "resolved" for r in rows(engine, "dead_letters:ballast.wallets"))
    (markets,) = [r for r in rows(engine, "dead_letters:ballast.markets") if r.status == "open"]
    assert markets.data["count"] == 2 and markets.data["logged"] == 0
    purge_all(env)
    with UnitOfWork(engine=engine) as uow:
        alerts.dead_letters(uow)
        uow.commit()
    assert all(r.status == "resolved" for r in rows(engine, "dead_letters:ballast.markets"))


def test_listing_gives_times_in_iso_8601(engine):
    key = uid("k")
    raise_one(engine, key)
    with engine.connect() as conn:
        (a,) = [x for x in alerts.listing(conn, open_only=True) if x["dedupe_key"] == key]
    assert datetime.fromisoformat(a["created_at"]) > datetime.now(timezone.utc) - timedelta(minutes=5)
