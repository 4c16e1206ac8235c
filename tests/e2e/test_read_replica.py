"""BALLAST_READ_DATABASE_URL: the read-only views (CLI listings, the console's pages) read
from a replica, never write there, while commands, levers and workers write to the primary.

The "replica" here is a database of its own with Ballast's schema and a wallet only it holds:
a view that shows that wallet read the replica; a deposit that lands in the primary (and not
in the replica) was written to the primary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.harness import CLI_OPERATOR, ROOT, Worker, uid, wait_until
from tests.web.conftest import PASSWORD, login, make_operator  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def replica(env):
    """A database shaped like the primary (migrated) holding one wallet the primary has not."""
    from infra.db.migrate import drop_database, upgrade

    url = make_url(env.database_url).set(database=f"{make_url(env.database_url).database}_replica")
    url = url.render_as_string(hide_password=False)
    upgrade(url)
    user = uid("replica")
    eng = create_engine(url)
    with eng.begin() as conn:
        conn.execute(text("INSERT INTO accounts (code, currency, balance, allow_negative) VALUES (:c, 'NGN', 777, false)"),
                     {"c": f"user:{user}:NGN"})
    eng.dispose()
    yield url, user
    from infra.db.engine import dispose_engines

    dispose_engines()
    drop_database(url)


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(**overrides), capture_output=True, text=True,
                          timeout=120)


def balance(url: str, code: str) -> int | None:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                                {"c": code}).scalar_one_or_none()
    finally:
        eng.dispose()


def test_views_read_the_replica_and_commands_write_the_primary(env, replica, clean_queues):
    url, replica_user = replica
    read = {"BALLAST_READ_DATABASE_URL": url}

    # Views read the replica: its wallet is there, the primary has no such account.
    assert balance(env.database_url, f"user:{replica_user}:NGN") is None
    done = cli(env, "ledger", "balance", f"user:{replica_user}:NGN", "--json", **read)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["balance"] == 777
    assert cli(env, "ledger", "balance", f"user:{replica_user}:NGN", "--json").returncode == 1

    # A command sent with the read URL set, processed by a worker with it set too, writes to
    # the primary only; the views show the replica's state (replication would bring it over).
    user = uid("primary")
    with Worker(env, **read):
        done = cli(env, "send", "deposit", "--kwargs", json.dumps(
            {"request_id": uid("rr"), "user_id": user, "currency": "NGN", "amount": 4_200,
             "reference": "read-replica"}), "--json", **read)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: balance(env.database_url, f"user:{user}:NGN") == 4_200, 60,
                   what="the deposit in the primary")
    assert balance(url, f"user:{user}:NGN") is None
    shown = cli(env, "wallet", "show", user, "--json", **read)
    # The replica has not caught up (it never will): there, the user is unknown (exit 1).
    assert shown.returncode == 1 and "no wallet for user" in shown.stderr, shown.stderr
    assert json.loads(cli(env, "wallet", "show", user, "--json").stdout)["balances"] == {"NGN": 4_200}

    # A lever writes to the primary (its operator log) with the read URL set.
    done = cli(env, "dlq", "purge", "ballast.wallets", "--by", CLI_OPERATOR, "--yes", "--json",
               **read)
    assert done.returncode == 0, done.stderr
    count = ("SELECT count(*) FROM operator_actions WHERE command = 'dlq purge' "
             "AND performed_by = :b")
    for where, expected in ((env.database_url, True), (url, False)):
        eng = create_engine(where)
        try:
            with eng.connect() as conn:
                n = conn.execute(text(count), {"b": CLI_OPERATOR}).scalar_one()
        finally:
            eng.dispose()
        assert (n > 0) is expected, where


def test_the_read_engine_refuses_to_write(env, replica, monkeypatch):
    from infra.db.engine import get_read_engine
    from infra.settings import get_settings

    url, replica_user = replica
    monkeypatch.setenv("BALLAST_READ_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        with pytest.raises(Exception, match="read-only transaction"):
            with get_read_engine().begin() as conn:
                conn.execute(text("UPDATE accounts SET balance = 0 WHERE code = :c"),
                             {"c": f"user:{replica_user}:NGN"})
        assert balance(url, f"user:{replica_user}:NGN") == 777
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_the_console_pages_read_the_replica_and_logins_use_the_primary(env, engine, replica,
                                                                       make_operator):
    from infra.web.app import create_app
    from infra.web.settings import WebSettings

    url, replica_user = replica
    read_engine = create_engine(url, connect_args={
        "options": "-c default_transaction_read_only=on"})
    try:
        app = create_app(engine, WebSettings(secret_key="test-" + "k" * 32), read_engine=read_engine)
        client = app.test_client()
        name = make_operator("viewer")  # in the primary only: the login reads the primary
        assert login(client, name, PASSWORD).status_code == 302
        page = client.get(f"https://localhost/wallets?user={replica_user}")
        assert page.status_code == 200
        assert "<tr><td>NGN</td>" in page.get_data(as_text=True)  # the replica's wallet
        primary_only = create_app(engine, WebSettings(secret_key="test-" + "k" * 32)).test_client()
        assert login(primary_only, name, PASSWORD).status_code == 302
        html = primary_only.get(f"https://localhost/wallets?user={replica_user}").get_data(as_text=True)
        assert "<tr><td>NGN</td>" not in html  # the primary has no such wallet
        with engine.connect() as conn:  # the login's audit line went to the primary
            assert conn.execute(text("SELECT count(*) FROM console_audit WHERE operator = :n "
                                     "AND action = 'login'"), {"n": name}).scalar_one() == 2
    finally:
        read_engine.dispose()
