"""Retention: published outbox rows and remembered request ids are pruned after their
window, never a pending row; ``ballast outbox [--pending]`` and ``ballast outbox prune``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import text

from schedules.table import SCHEDULES
from tests.harness import ROOT, send, uid, wait_until


def cli(env, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(**overrides), capture_output=True, text=True, timeout=120)


def cli_json(env, *args: str, **overrides: str):
    done = cli(env, *args, "--json", **overrides)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def outbox_row(engine, *, created_ago: str, published_ago: str | None) -> int:
    with engine.begin() as conn:
        return conn.execute(text(
            "INSERT INTO outbox (kind, destination, routing_key, event_name, body, created_at, "
            "published_at) VALUES ('event', 'ballast.events', 'test.retention', 'test.retention', "
            "'{}'::jsonb, now() - CAST(:c AS interval), now() - CAST(:p AS interval)) RETURNING id"),
            {"c": created_ago, "p": published_ago}).scalar_one() if published_ago else conn.execute(text(
                "INSERT INTO outbox (kind, destination, routing_key, event_name, body, created_at) "
                "VALUES ('event', 'ballast.events', 'test.retention', 'test.retention', '{}'::jsonb, "
                "now() - CAST(:c AS interval)) RETURNING id"), {"c": created_ago}).scalar_one()


def request(engine, ago: str) -> str:
    rid = uid("rq")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO processed_requests (actor, request_id, payload_hash, created_at) "
                          "VALUES ('deposit', :r, 'h', now() - CAST(:a AS interval))"),
                     {"r": rid, "a": ago})
    return rid


def exists(engine, table: str, where: str, **params) -> bool:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one() > 0


@pytest.fixture
def aged(engine):
    with engine.begin() as conn:  # rows other tests left past every window
        conn.execute(text("UPDATE outbox SET published_at = now() WHERE published_at < now() - interval '1 hour'"))
    return {
        "old_published": outbox_row(engine, created_ago="40 days", published_ago="40 days"),
        "new_published": outbox_row(engine, created_ago="2 days", published_ago="2 days"),
        "two_hours": outbox_row(engine, created_ago="2 hours", published_ago="2 hours"),
        "old_pending": outbox_row(engine, created_ago="40 days", published_ago=None),
        "old_request": request(engine, "40 days"),
        "new_request": request(engine, "2 days"),
    }


def test_prune_deletes_only_published_rows_and_request_ids_past_their_window(env, engine, aged):
    dry = cli_json(env, "outbox", "prune", "--dry-run")
    assert (dry["dry_run"], dry["would_prune_outbox"], dry["older_than_s"]) == (True, 1, 30 * 86400)
    assert dry["would_prune_requests"] >= 1
    assert exists(engine, "outbox", "id = :i", i=aged["old_published"])  # dry run: nothing gone

    done = cli_json(env, "outbox", "prune")
    assert done["outbox_pruned"] == 1 and done["requests_pruned"] >= 1
    assert not exists(engine, "outbox", "id = :i", i=aged["old_published"])
    assert exists(engine, "outbox", "id = :i", i=aged["new_published"])
    assert exists(engine, "outbox", "id = :i", i=aged["old_pending"])  # never a pending row
    assert not exists(engine, "processed_requests", "request_id = :r", r=aged["old_request"])
    assert exists(engine, "processed_requests", "request_id = :r", r=aged["new_request"])

    short = cli_json(env, "outbox", "prune", "--older-than", "90m")
    assert short["outbox_pruned"] == 2 and short["older_than_s"] == 5400
    assert not exists(engine, "outbox", "id = :i", i=aged["two_hours"])
    assert exists(engine, "processed_requests", "request_id = :r", r=aged["new_request"])
    assert exists(engine, "outbox", "id = :i", i=aged["old_pending"])
    bad = cli(env, "outbox", "prune", "--older-than", "a while")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_windows_are_configurable_and_request_ids_outlive_dead_letters(env, engine, aged):
    doc = cli_json(env, "outbox", BALLAST_RETENTION_OUTBOX_DAYS="1")
    assert doc["retention_days"] == 1 and doc["prunable"] >= 2
    done = cli_json(env, "outbox", "prune", BALLAST_RETENTION_OUTBOX_DAYS="1",
                    BALLAST_RETENTION_REQUESTS_DAYS="60")
    assert done["outbox_pruned"] == 2 and done["requests_older_than_s"] == 60 * 86400
    assert exists(engine, "processed_requests", "request_id = :r", r=aged["old_request"])  # 40 < 60
    refused = cli(env, "outbox", BALLAST_RETENTION_REQUESTS_DAYS="7")  # = the 7-day XQ TTL
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1


def test_outbox_view_shows_the_backlog_and_its_oldest_age(env, engine, aged):
    doc = cli_json(env, "outbox")
    assert {"pending", "oldest_pending_at", "oldest_pending_age_s", "published", "retention_days",
            "prunable", "requests_retention_days", "requests_prunable"} == set(doc)
    assert doc["pending"] >= 1 and doc["oldest_pending_age_s"] >= 40 * 86400 - 60
    pending = cli_json(env, "outbox", "--pending")
    assert aged["old_pending"] in [r["id"] for r in pending]
    assert aged["old_published"] not in [r["id"] for r in pending]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox WHERE id = :i"), {"i": aged["old_pending"]})


def test_retention_is_scheduled_hourly_and_its_actor_prunes(env, engine, aged, worker):
    [s] = [s for s in SCHEDULES if s.actor == "prune_retention"]
    assert s.every_s == 3600
    send(env, "prune_retention", request_id=uid("prune"))
    # The step prunes the outbox, then (in transactions of their own) the request ids.
    wait_until(lambda: not exists(engine, "outbox", "id = :i", i=aged["old_published"])
               and not exists(engine, "processed_requests", "request_id = :r",
                              r=aged["old_request"]),
               what="the retention step")
    assert exists(engine, "outbox", "id = :i", i=aged["new_published"])
