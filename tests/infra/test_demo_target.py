"""The demo runs only on a database, vhost and Redis db of its own (issue 17, "Safety")."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy.engine import make_url

from infra import rabbit_admin
from infra.db.migrate import _libpq_dsn, drop_database
from infra.demo import target as demo
from infra.settings import Settings, get_settings
from tests.e2e.test_cli import snapshot
from tests.harness import ROOT, uid


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(**overrides), capture_output=True, text=True, timeout=120)


def databases(env) -> set[str]:
    with psycopg.connect(_libpq_dsn(env.database_url, "postgres"), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def other_redis_db(env) -> int:
    return 14 if env.redis_url.endswith("/15") else 15


@pytest.fixture
def demo_name():
    name = f"ballast_test_demo_{uid('d').lower()}"
    yield name
    drop_database(make_url(get_settings().database_url).set(database=name)
                  .render_as_string(hide_password=False))
    rabbit_admin.delete_vhost(name)


def test_the_default_target_is_ballast_demo_never_the_default_urls():
    plain = Settings.model_construct()  # the documented defaults, whatever the environment
    t = demo.target_for(plain)
    assert t.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/ballast_demo"
    assert t.broker_url == "amqp://guest:guest@127.0.0.1:5672/ballast_demo"
    assert t.redis_url == "redis://127.0.0.1:6379/15"
    env = t.environ()
    assert env["BALLAST_DATABASE_URL"] != plain.database_url
    assert env["BALLAST_BROKER_URL"] != plain.broker_url
    assert env["BALLAST_REDIS_URL"] != plain.redis_url
    assert env["BALLAST_ALERT_WEBHOOK_URL"] == ""  # the demo's alerts never reach production's hook


def test_the_demo_refuses_the_production_name_without_creating_it(env):
    existed = "ballast" in databases(env)
    done = cli(env, "demo", "--database", "ballast", "--redis-db", str(other_redis_db(env)))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "refused: the demo never runs on the database 'ballast' (the production name); "
        "use --database ballast_demo"]
    assert ("ballast" in databases(env)) == existed


def test_the_demo_refuses_a_database_in_use_and_changes_nothing_there(env):
    before = snapshot(env.database_url)
    other = f"ballast_test_other_{uid('o').lower()}"
    in_use = make_url(env.database_url).set(database=other).render_as_string(hide_password=False)
    from infra.db.migrate import upgrade

    upgrade(in_use)  # a real Ballast database that is not BALLAST_DATABASE_URL's
    try:
        kept = snapshot(in_use)
        for database in (make_url(env.database_url).database, other):
            done = cli(env, "demo", "--database", database, "--vhost", f"v{uid().lower()}",
                       "--redis-db", str(other_redis_db(env)))
            assert done.returncode == 2, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1 and "refused" in done.stderr
            assert done.stdout == ""
        assert snapshot(in_use) == kept
        assert snapshot(env.database_url) == before
        with pytest.raises(demo.DemoRefused, match="not empty and not a demo database"):
            demo.check(demo.target_for(get_settings(), other, "ballast_test_demo_x",
                                       other_redis_db(env)), get_settings())
    finally:
        drop_database(in_use)


def test_the_demo_refuses_production_vhost_and_redis_db(env):
    s = get_settings()
    with pytest.raises(demo.DemoRefused, match="REDIS_URL"):
        demo.check(demo.target_for(s, "ballast_test_nothere", "ballast_test_nothere",
                                   int(env.redis_url.rsplit("/", 1)[1])), s)
    with pytest.raises(demo.DemoRefused, match="vhost"):
        demo.check(demo.target_for(s, "ballast_test_nothere", env.vhost, other_redis_db(env)), s)


def test_prepare_marks_a_fresh_database_and_vhost_and_recreates_them_next_time(env, demo_name):
    s = get_settings()
    t = demo.target_for(s, demo_name, demo_name, other_redis_db(env))
    assert demo.check(t, s) == "absent"
    demo.prepare(t, s)
    assert demo.database_state(t.database_url) == "demo"
    assert rabbit_admin.vhost(demo_name)["description"] == demo.VHOST_MARKER
    with psycopg.connect(_libpq_dsn(t.database_url, demo_name), autocommit=True) as conn:
        conn.execute("CREATE TABLE leftover (x int)")
    assert demo.check(t, s) == "demo"  # marked: allowed although not empty
    demo.prepare(t, s)
    with psycopg.connect(_libpq_dsn(t.database_url, demo_name), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('leftover')").fetchone()[0] is None  # fresh
    demo.clean(t, s)
    assert demo.database_state(t.database_url) == "absent"
    assert rabbit_admin.vhost(demo_name) is None


def test_an_empty_unmarked_database_is_taken_and_marked(env, demo_name):
    s = get_settings()
    t = demo.target_for(s, demo_name, demo_name, other_redis_db(env))
    with psycopg.connect(_libpq_dsn(t.database_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{demo_name}"')
    assert demo.check(t, s) == "empty"
    demo.prepare(t, s)
    assert demo.database_state(t.database_url) == "demo"


def test_a_vhost_that_is_not_the_demos_is_refused(env, demo_name):
    s = get_settings()
    rabbit_admin.create_vhost(demo_name, "someone else's")
    with pytest.raises(demo.DemoRefused, match="not a demo vhost"):
        demo.check(demo.target_for(s, demo_name, demo_name, other_redis_db(env)), s)
    assert demo.database_state(demo.target_for(s, demo_name).database_url) == "absent"


@pytest.mark.e2e
def test_a_demo_run_writes_only_to_its_own_database(env, engine, demo_name, monkeypatch):
    from sqlalchemy import create_engine, text

    from infra.demo import runner

    user = uid("demo")

    def tiny_chapter(ctx):
        ctx.chapter("tiny", "one deposit")
        ctx.send("deposit", request_id=ctx.id("dep"), user_id=user, currency="NGN", amount=700,
                 reference="demo")
        ctx.wait_until(lambda: ctx.cli("wallet", "show", user)["balances"] == {"NGN": 700},
                       "the deposit")

    tiny_chapter.run = tiny_chapter
    for key in ("BALLAST_DATABASE_URL", "BALLAST_BROKER_URL", "BALLAST_REDIS_URL",
                "BALLAST_ALERT_WEBHOOK_URL", "BALLAST_METRICS_PORT"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
    monkeypatch.setattr(runner, "CHAPTERS", [tiny_chapter])
    before = snapshot(env.database_url)
    t = demo.target_for(get_settings(), demo_name, demo_name, other_redis_db(env))
    try:
        assert runner.run_demo(t, as_json=True, scheduler=False) == 0
    finally:
        get_settings.cache_clear()
        from infra.db.engine import dispose_engines
        dispose_engines()
    assert snapshot(env.database_url) == before
    other = create_engine(t.database_url)
    try:
        with other.connect() as conn:
            assert conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                                {"c": f"user:{user}:NGN"}).scalar_one() == 700
    finally:
        other.dispose()
    assert demo.database_state(t.database_url) == "demo"
