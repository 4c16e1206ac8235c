"""Group commit (``infra.group_commit``): the deposits a worker's threads handle at once share
one transaction — each still applied once, refused alone, and safe across a crash."""

from __future__ import annotations

import json
import os

import dramatiq
import pika
import pytest
from sqlalchemy import text

from infra import ledger
from infra.broker import build_broker
from infra.contract import spec_for
from tests.e2e.test_observability import free_port, sample, scrape
from tests.harness import EventTap, Worker, _signed, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e


def _publish_all(env, actor: str, kwargs_list: list[dict]) -> None:
    """Every command on one channel, all at once, so the worker's threads take them
    together (the situation group commit is for)."""
    queue = spec_for(actor).queue
    bodies = [_signed(env, json.dumps(dramatiq.Message(
        queue_name=queue, actor_name=actor, args=(), kwargs=kw, options={}).asdict()).encode())
        for kw in kwargs_list]
    broker = build_broker(env.broker_url)
    try:
        broker.declare_queue(queue, ensure=True)
        for body in bodies:
            broker.channel.basic_publish(exchange="", routing_key=queue, body=body,
                                         properties=pika.BasicProperties(delivery_mode=2))
    finally:
        broker.close()


def _deposits(users: list[str], rounds: int, tag: str) -> list[dict]:
    return [dict(request_id=f"{tag}-{r}-{n}", user_id=u, currency="NGN", amount=100 + n,
                 reference=f"group {r}") for r in range(rounds) for n, u in enumerate(users)]


def _state(engine, tag: str, users: list[str]) -> dict:
    with engine.connect() as conn:
        claims = conn.execute(text(
            "SELECT count(*) AS n, count(DISTINCT xmin::text) AS txns FROM processed_requests "
            "WHERE actor = 'deposit' AND request_id LIKE :t"), {"t": f"{tag}-%"}).one()
        balances = dict(conn.execute(text(
            "SELECT code, balance FROM accounts WHERE code = ANY(:c)"),
            {"c": [f"user:{u}:NGN" for u in users]}).all())
        entries = dict(conn.execute(text(
            "SELECT a.code, count(*) FROM ledger_entries e JOIN accounts a ON a.id = e.account_id "
            "WHERE a.code = ANY(:c) GROUP BY a.code"), {"c": [f"user:{u}:NGN" for u in users]}).all())
        audit = conn.execute(text(
            "SELECT count(*) FROM wallet_audit WHERE user_id = ANY(:u)"), {"u": users}).scalar_one()
        ok = ledger.check(conn)["ok"]
    return {"claims": claims.n, "txns": claims.txns, "balances": balances, "entries": entries,
            "audit": audit, "ledger_ok": ok}


def _group_sizes(engine, actor: str, like: str) -> dict[int, int]:
    """Transactions by how many claims of ``actor`` they hold (size -> how many)."""
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT n, count(*) FROM (SELECT count(*) AS n FROM processed_requests "
            "WHERE actor = :a AND request_id LIKE :t GROUP BY xmin::text) g GROUP BY n"),
            {"a": actor, "t": like}).all())


def test_concurrent_deposits_share_commits_and_each_takes_effect_once(env, engine, clean_queues):
    users = [uid() for _ in range(40)]
    tag = uid("grp")
    tap = EventTap(env, "wallet.changed")
    port = free_port()
    try:
        with Worker(env, threads=8, BALLAST_METRICS_PORT=str(port),
                    BALLAST_METRICS_HOST="127.0.0.1"):
            _publish_all(env, "deposit", _deposits(users, 5, tag))
            wait_quiet(env, timeout=120)
            got = _state(engine, tag, users)
            exposition = scrape(port)
        assert got["claims"] == 200 and got["audit"] == 200
        # Claims committed together share their transaction id: fewer commits than deposits.
        assert got["txns"] < 200
        # The worker counted the same groups the database holds.
        sizes = _group_sizes(engine, "deposit", f"{tag}-%")
        for size, count in sizes.items():
            if size > 1:
                assert sample(exposition, "ballast_group_commits_total", actor="deposit",
                              size=str(size)) == count
        assert got["balances"] == {f"user:{u}:NGN": 5 * (100 + n) for n, u in enumerate(users)}
        assert set(got["entries"].values()) == {5}
        assert got["ledger_ok"]
        events = [e for e in tap.drain() if e["recipient"] in set(users)]
        assert len(events) == 200  # every deposit's wallet.changed was published
        assert len({e["data"]["transaction_id"] for e in events}) == 200
    finally:
        tap.close()


def test_refused_deposits_in_groups_are_refused_alone_and_the_others_apply(env, engine,
                                                                          clean_queues):
    users, big = [uid() for _ in range(30)], [uid() for _ in range(6)]
    tag = uid("grp")
    kwargs = _deposits(users, 3, tag)
    # Bronze's daily limit is NGN 50,000 (SPEC §4), 5,000,000 minor units: these break it.
    refused = [dict(request_id=f"{tag}-big{n}", user_id=u, currency="NGN", amount=600_000_000,
                    reference="too much") for n, u in enumerate(big)]
    mixed = list(kwargs)
    for n, r in enumerate(refused):  # spread among the others, so each lands in a group
        mixed.insert(10 + 13 * n, r)
    tap = EventTap(env, "balance.change_rejected")
    try:
        with Worker(env, threads=8) as w:
            _publish_all(env, "deposit", mixed)
            wait_quiet(env, timeout=120)
            got = _state(engine, tag, users)
            log = w.log()
        assert got["claims"] == 90  # the refused ones left no claim
        assert got["balances"] == {f"user:{u}:NGN": 3 * (100 + n) for n, u in enumerate(users)}
        assert got["ledger_ok"]
        assert not _state(engine, tag, big)["balances"].get(f"user:{big[0]}:NGN")
        told: set[str] = set()

        def all_told():
            told.update(e["recipient"] for e in tap.drain() if e["recipient"] in set(big))
            return told == set(big) or None

        wait_until(all_told, what="every refusal's event")
        # A group holding a refused deposit rolled back and its deposits ran alone.
        assert "group_commit.fallback" in log
    finally:
        tap.close()


def test_a_worker_killed_after_a_group_commit_applies_nothing_twice(env, engine, clean_queues,
                                                                   tmp_path):
    users = [uid() for _ in range(40)]
    tag = uid("grp")
    _publish_all(env, "deposit", _deposits(users, 4, tag))
    w = Worker(env, threads=8, faults="after_group_commit:deposit",
               BALLAST_FAULT_DIR=str(tmp_path)).start(wait=False)
    try:
        w.wait_dead(timeout=60)  # SIGKILLed right after a group's commit, before its acks
        assert os.path.exists(tmp_path / "ballast-fault-after_group_commit-deposit")
        with engine.connect() as conn:
            committed = conn.execute(text(
                "SELECT count(*) FROM processed_requests WHERE actor = 'deposit' "
                "AND request_id LIKE :t"), {"t": f"{tag}-%"}).scalar_one()
        assert 2 <= committed < 160
        w.start()  # RabbitMQ redelivers every unacknowledged deposit
        wait_quiet(env, timeout=120, outbox=False)
        got = _state(engine, tag, users)
        assert got["claims"] == 160 and got["audit"] == 160
        assert got["balances"] == {f"user:{u}:NGN": 4 * (100 + n) for n, u in enumerate(users)}
        assert set(got["entries"].values()) == {4}
        assert got["ledger_ok"]
    finally:
        w.stop()


def test_the_joins_of_one_challenge_are_grouped_and_each_user_joins_once(env, engine,
                                                                         clean_queues):
    cid, users = uid("ch"), [uid() for _ in range(12)]
    with Worker(env, threads=8) as w:
        _publish_all(env, "deposit", [dict(request_id=f"{cid}-f{n}", user_id=u, currency="NGN",
                                           amount=100_000, reference="funds")
                                      for n, u in enumerate(users)])
        _publish_all(env, "open_challenge", [dict(request_id=f"{cid}-open", challenge_id=cid,
                                                  title="grouped joins", currency="NGN",
                                                  stake=10_000, admin_created=True)])
        wait_quiet(env, timeout=60)
        joins = [dict(request_id=f"{cid}-j{n}", challenge_id=cid, user_id=u,
                      side="YES" if n % 2 else "NO") for n, u in enumerate(users)]
        _publish_all(env, "join_challenge", joins + joins[:3])  # three resent
        wait_quiet(env, timeout=120)
        log = w.log()
    with engine.connect() as conn:
        claims = conn.execute(text(
            "SELECT count(*) AS n, count(DISTINCT xmin::text) AS txns FROM processed_requests "
            "WHERE actor = 'join_challenge' AND request_id LIKE :t"), {"t": f"{cid}-j%"}).one()
        seats = conn.execute(text(
            "SELECT user_id, paired_with IS NOT NULL AS paired FROM challenge_participants "
            "WHERE challenge_id = :c"), {"c": cid}).all()
        balances = dict(conn.execute(text(
            "SELECT code, balance FROM account_balances WHERE code = ANY(:c)"),
            {"c": [f"user:{u}:NGN" for u in users]}).all())
        ok = ledger.check(conn)["ok"]
    assert claims.n == 12
    assert claims.txns < 12  # joins of the challenge committed together
    assert "group_commit.fallback" not in log  # set-wise, not one by one after a failure
    assert sorted(s.user_id for s in seats) == sorted(users)  # each joined once
    assert all(s.paired for s in seats)  # six YES, six NO: every seat paired
    assert set(balances.values()) == {90_000}
    assert ok
