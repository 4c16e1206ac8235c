"""The backbone through real RabbitMQ, PostgreSQL and worker processes (issue: foundation)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text

from infra import rabbit
from tests.harness import EventTap, Worker, publish_raw, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e


def balance(engine, user, cur="NGN"):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT balance FROM accounts WHERE code = :c"), {"c": f"user:{user}:{cur}"}
        ).scalar_one_or_none()


def ledger_ok(engine):
    from infra import ledger

    with engine.connect() as conn:
        return ledger.check(conn)["ok"]


def dead(env, actor=None):
    return [d.summary() for d in rabbit.list_dead_letters(None, 1000, env.broker_url)
            if actor is None or d.body.get("actor_name") == actor]


def test_deposit_takes_effect_once_when_delivered_twice_or_resent(env, engine, worker):
    user = uid()
    kwargs = dict(request_id=uid("r"), user_id=user, currency="NGN", amount=12_345, reference="bank")
    first = send(env, "deposit", **kwargs)
    send(env, "deposit", **kwargs)  # the upstream app resends
    # RabbitMQ redelivers the very same message (same message id):
    from infra.contract import spec_for
    import dramatiq

    again = dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                             kwargs=kwargs, options={}, message_id=first)
    publish_raw(env, spec_for("deposit").queue, json.dumps(again.asdict()).encode())
    wait_quiet(env)
    assert balance(engine, user) == 12_345
    assert ledger_ok(engine)


def test_same_request_id_with_other_payload_is_refused(env, engine, worker):
    user = uid()
    rid = uid("r")
    send(env, "deposit", request_id=rid, user_id=user, currency="NGN", amount=100, reference="a")
    wait_until(lambda: balance(engine, user) == 100)
    send(env, "deposit", request_id=rid, user_id=user, currency="NGN", amount=999, reference="a")
    letters = wait_until(lambda: [d for d in dead(env, "deposit") if d["request_id"] == rid])
    assert "different payload" in letters[0]["reason"]
    assert balance(engine, user) == 100


def test_invalid_message_goes_to_xq_with_reason_and_changes_nothing(env, engine, worker):
    tap = EventTap(env, "command.rejected")
    user = uid()
    rid = uid("r")
    send(env, "deposit", request_id=rid, user_id=user, currency="NGN", amount=10.5,
         reference="x", surprise=True)
    letters = wait_until(lambda: [d for d in dead(env, "deposit") if d["request_id"] == rid])
    reason = letters[0]["reason"]
    assert "amount" in reason and "surprise" in reason
    assert letters[0]["retries"] == 0
    assert balance(engine, user) is None
    rejected = wait_until(lambda: [e for e in tap.named("command.rejected")
                                   if e["data"]["request_id"] == rid])
    assert rejected[0]["data"]["actor"] == "deposit"
    tap.close()


def test_garbage_body_is_dead_lettered_not_retried(env, engine, worker):
    publish_raw(env, "ballast.wallets", b"this is not json")
    wait_until(lambda: rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"] >= 1)


def test_refused_withdrawal_replayed_after_the_cause_is_fixed_is_processed(env, engine, worker):
    user = uid()
    rid = uid("r")
    # A bronze wallet may go down to -10,000.00 USD (its credit line): ask for 5.00 more.
    send(env, "withdraw", request_id=rid, user_id=user, currency="USD", amount=1_000_500, reference="out")
    letter = wait_until(lambda: [d for d in dead(env, "withdraw") if d["request_id"] == rid])[0]
    assert "min_balance" in letter["reason"] and "short by 500" in letter["reason"]
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="USD", amount=1_000_800, reference="in")
    wait_until(lambda: balance(engine, user, "USD") == 1_000_800)
    assert rabbit.replay("ballast.wallets", {letter["message_id"]}, env.broker_url) == 1
    wait_until(lambda: balance(engine, user, "USD") == 300, what="replayed withdrawal")
    assert not [d for d in dead(env, "withdraw") if d["request_id"] == rid]
    assert ledger_ok(engine)


def test_worker_killed_between_commit_and_ack_causes_no_second_effect(env, engine, clean_queues):
    user = uid()
    w = Worker(env, faults="after_commit:deposit").start()
    try:
        send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=700, reference="x")
        w.wait_dead()  # the fault SIGKILLed it right after commit, before ack
        assert balance(engine, user) == 700
        w.start()  # RabbitMQ redelivers the unacknowledged message
        wait_quiet(env, outbox=False)  # the crash left its event for the sweeper
        assert balance(engine, user) == 700
        with engine.connect() as conn:
            n = conn.execute(text(
                "SELECT count(*) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id "
                "WHERE a.code = :c"), {"c": f"user:{user}:NGN"}).scalar_one()
        assert n == 1
    finally:
        w.stop()


def test_outbox_row_left_by_a_crash_is_published_by_the_sweeper(env, engine, clean_queues):
    tap = EventTap(env, "wallet.changed")
    user = uid()
    w = Worker(env, faults="after_commit:deposit").start()
    try:
        send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=900, reference="x")
        w.wait_dead()
        with engine.connect() as conn:
            pending = conn.execute(text(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND recipient = :u"),
                {"u": user}).scalar_one()
        assert pending == 1
        assert not [e for e in tap.named("wallet.changed") if e["recipient"] == user]
        w.start()

        def swept():
            # As the scheduler does every 10 s; rows younger than the grace are left alone.
            send(env, "sweep_outbox", request_id=uid("sweep"))
            time.sleep(1)
            return [e for e in tap.named("wallet.changed") if e["recipient"] == user]

        got = wait_until(swept, timeout=40, what="swept event")
        assert got[0]["data"]["amount"] == 900
        assert balance(engine, user) == 900
    finally:
        w.stop()
        tap.close()
