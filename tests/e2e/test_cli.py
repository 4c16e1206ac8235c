"""The operator's CLI through the real executable: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from infra import rabbit
from infra.contract import QUEUES
from infra.db.migrate import drop_database
from tests.harness import CLI_OPERATOR, ROOT, amqp, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

DEAD_LETTER_KEYS = {"queue", "message_id", "actor", "request_id", "reason", "retries", "failed_at"}


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(**overrides), capture_output=True, text=True, timeout=120)


def cli_json(env, *args: str, **overrides: str):
    done = cli(env, *args, "--json", **overrides)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_usage_error(done: subprocess.CompletedProcess, code: int = 2) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def snapshot(url: str) -> dict:
    """The schema (columns, indexes, constraints) and every table's content, hashed."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            columns = conn.execute(text(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position")).all()
            indexes = conn.execute(text(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexdef")).all()
            constraints = conn.execute(text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2")).all()
            tables = conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).scalars().all()
            content = {
                t: conn.execute(text(
                    f'SELECT count(*), md5(coalesce(string_agg(x::text, \',\' ORDER BY x::text), \'\')) '
                    f'FROM "{t}" x')).one()
                for t in tables
            }
        return {"columns": columns, "indexes": indexes, "constraints": constraints,
                "content": {t: tuple(v) for t, v in content.items()}}
    finally:
        engine.dispose()


def dead_letters(env, actor: str) -> list[dict]:
    return [d.summary() for d in rabbit.list_dead_letters("ballast.wallets", 1000, env.broker_url)
            if d.body.get("actor_name") == actor]


def balance(engine, code: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                            {"c": code}).scalar_one_or_none()


# --- migrate, queues ---------------------------------------------------------------------

def test_migrate_brings_an_empty_database_to_head_and_twice_changes_nothing(env):
    url = env.database_url.rsplit("/", 1)[0] + f"/ballast_test_{uid('mig')}"
    try:
        first = cli_json(env, "migrate", BALLAST_DATABASE_URL=url)
        assert set(first) == {"revision"} and first["revision"]
        before = snapshot(url)
        assert before["content"]["accounts"][0] > 0  # reference data seeded
        again = cli_json(env, "migrate", BALLAST_DATABASE_URL=url)
        assert again == first
        assert snapshot(url) == before
    finally:
        drop_database(url)


def test_migrate_on_the_existing_database_changes_nothing_and_declares_every_queue(env):
    before = snapshot(env.database_url)
    assert set(cli_json(env, "migrate")) == {"revision"}
    assert snapshot(env.database_url) == before
    rows = cli_json(env, "queues")
    assert [r["queue"] for r in rows] == QUEUES
    assert all(set(r) == {"queue", "ready", "delayed", "dead", "consumers",  # added by issue 17:
                          "unacked", "publish_rate", "ack_rate", "source"} for r in rows)
    assert all(isinstance(r[k], int) for r in rows for k in ("ready", "delayed", "dead", "consumers"))


@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["queues", "--no-such-option"],
    ["dlq", "list", "--limit", "many"],
    ["send"],
])
def test_bad_usage_exits_2_with_one_line_on_stderr(env, args):
    done = cli(env, *args)
    assert_usage_error(done)
    assert done.stdout == ""


# --- send ------------------------------------------------------------------------------

def test_send_validates_then_publishes_to_the_actors_queue(env, clean_queues):
    rid = uid("r")
    kwargs = {"request_id": rid, "user_id": uid(), "currency": "NGN", "amount": 250,
              "reference": "cli"}
    doc = cli_json(env, "send", "deposit", "--kwargs", json.dumps(kwargs))
    assert set(doc) == {"message_id", "queue"} and doc["queue"] == "ballast.wallets"
    conn = amqp(env)
    try:
        method, _, body = conn.channel().basic_get("ballast.wallets", auto_ack=True)
    finally:
        conn.close()
    message = json.loads(body)
    assert (message["message_id"], message["actor_name"], message["kwargs"]) == (
        doc["message_id"], "deposit", kwargs)


@pytest.mark.parametrize("args", [
    ["deposit", "--kwargs", json.dumps({"request_id": "r", "user_id": "u", "currency": "NGN",
                                        "amount": 2.5, "reference": "x"})],
    ["deposit", "--kwargs", json.dumps({"request_id": "r", "user_id": "u", "currency": "NGN",
                                        "amount": 1, "reference": "x", "surprise": 1})],
    ["deposit", "--kwargs", json.dumps({"request_id": "r", "user_id": "u", "currency": "EUR",
                                        "amount": 1, "reference": "x"})],
    ["deposit", "--kwargs", "{not json"],
    ["deposit", "--kwargs", "[1, 2]"],
    ["no_such_actor", "--kwargs", "{}"],
])
def test_send_refuses_an_invalid_command_in_one_line_and_sends_nothing(env, clean_queues, args):
    assert_usage_error(cli(env, "send", *args, "--json"))
    stats = {r["queue"]: r["ready"] for r in rabbit.queue_stats(env.broker_url)}
    assert stats.get("ballast.wallets", 0) == 0


# --- ledger and wallets -----------------------------------------------------------------

def test_ledger_check_and_balance_and_wallet_show(env, engine, worker):
    user = uid()
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=4_200,
         reference="cli")
    wait_until(lambda: balance(engine, f"user:{user}:NGN") == 4_200)

    check = cli_json(env, "ledger", "check")
    assert set(check) == {"ok", "transactions", "entries", "unbalanced", "balance_mismatches",
                          "negative_balances"}
    assert check["ok"] is True and check["transactions"] >= 1 and check["entries"] >= 2

    assert cli_json(env, "ledger", "balance", f"user:{user}:NGN") == {
        "account": f"user:{user}:NGN", "currency": "NGN", "balance": 4_200}
    assert_usage_error(cli(env, "ledger", "balance", f"user:{uid()}:NGN", "--json"), code=1)

    wallet = cli_json(env, "wallet", "show", user)
    assert set(wallet) >= {"user_id", "tier", "balances", "history", "alerts"}
    assert wallet["user_id"] == user and wallet["balances"] == {"NGN": 4_200}
    assert [(h["kind"], h["amount"], h["balance_after"]) for h in wallet["history"]] == [
        ("deposit", 4_200, 4_200)]
    assert cli_json(env, "wallet", "show", user, "--currency", "USD")["balances"] == {}


def test_ledger_check_exits_1_and_names_what_is_wrong(env, engine):
    from domain.ledger import Posting
    from infra import ledger

    code = f"user:{uid()}:NGN"
    with engine.begin() as conn:
        ledger.post(conn, [Posting("world:NGN", "NGN", -5), Posting(code, "NGN", 5)], kind="test")
    try:
        with engine.begin() as conn:  # a cached balance that no longer equals its entries
            conn.execute(text("UPDATE accounts SET balance = balance + 1 WHERE code = :c"), {"c": code})
        done = cli(env, "ledger", "check", "--json")
        assert done.returncode == 1
        doc = json.loads(done.stdout)
        assert doc["ok"] is False
        assert {"account": code, "cached": 6, "entries": 5} in doc["balance_mismatches"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE accounts SET balance = balance - 1 WHERE code = :c"), {"c": code})
    assert cli(env, "ledger", "check", "--json").returncode == 0


# --- dead letters ----------------------------------------------------------------------

def test_dead_letters_are_listed_shown_replayed_and_purged(env, engine, worker):
    user = uid()
    rid = uid("r")
    # Beyond the bronze credit line (SPEC §4: min balance -10,000.00): refused.
    send(env, "withdraw", request_id=rid, user_id=user, currency="USD", amount=1_500_000,
         reference="out")
    wait_until(lambda: [d for d in dead_letters(env, "withdraw") if d["request_id"] == rid])

    listed = cli_json(env, "dlq", "list", "ballast.wallets")
    mine = [d for d in listed if d["request_id"] == rid]
    assert len(mine) == 1 and set(mine[0]) == DEAD_LETTER_KEYS | {"code"}  # code: added (issue 17)
    assert mine[0]["actor"] == "withdraw" and mine[0]["reason"]
    assert mine[0]["retries"] == 0 and mine[0]["failed_at"]
    assert [d for d in cli_json(env, "dlq", "list") if d["request_id"] == rid] == mine
    assert len(cli_json(env, "dlq", "list", "--limit", "1")) == 1
    assert_usage_error(cli(env, "dlq", "list", "no.such.queue", "--json"))

    message_id = mine[0]["message_id"]
    shown = cli_json(env, "dlq", "show", message_id)
    assert shown["reason"] == mine[0]["reason"] and "traceback" in shown
    assert shown["message"]["kwargs"]["request_id"] == rid
    assert shown["message"]["options"]["dead_letter"]["reason"] == mine[0]["reason"]
    assert_usage_error(cli(env, "dlq", "show", "no-such-id", "--json"), code=1)

    # The cause is fixed, then the dead letter is replayed and processed.
    send(env, "deposit", request_id=uid("r"), user_id=user, currency="USD", amount=1_000_000,
         reference="in")
    wait_until(lambda: balance(engine, f"user:{user}:USD") == 1_000_000)
    assert_usage_error(cli(env, "dlq", "replay", "ballast.wallets", "--by", CLI_OPERATOR, "--json"))  # neither --all nor --id
    assert_usage_error(cli(env, "dlq", "replay", "ballast.wallets", "--id", message_id, "--json"))  # no --by
    replayed = cli_json(env, "dlq", "replay", "ballast.wallets", "--id", message_id, "--by", CLI_OPERATOR)
    assert replayed["replayed"] == 1 and replayed["queues"] == {"ballast.wallets": 1}
    wait_until(lambda: balance(engine, f"user:{user}:USD") == -500_000, what="replayed withdrawal")
    wait_quiet(env)
    assert not [d for d in dead_letters(env, "withdraw") if d["request_id"] == rid]

    # Purging needs --yes.
    send(env, "withdraw", request_id=uid("r"), user_id=uid(), currency="USD", amount=2_000_000,
         reference="x")
    wait_until(lambda: rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"] >= 1)
    dead = rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"]
    assert_usage_error(cli(env, "dlq", "purge", "ballast.wallets", "--by", CLI_OPERATOR, "--json"))
    assert rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"] == dead
    assert cli_json(env, "dlq", "purge", "ballast.wallets", "--by", CLI_OPERATOR, "--dry-run") == {
        "dry_run": True, "purged": 0, "would_purge": dead}
    assert rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"] == dead
    assert cli_json(env, "dlq", "purge", "ballast.wallets", "--by", CLI_OPERATOR, "--yes") == {"purged": dead}
    assert rabbit.dead_letter_counts(env.broker_url)["ballast.wallets"] == 0
    assert cli_json(env, "dlq", "list", "ballast.wallets") == []
