"""Levers that move or cancel money, through the real executable: asked on a terminal,
``--yes`` in scripts (exit 2 without it), ``--dry-run`` changes nothing, ``--by`` required
and recorded."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import dramatiq
import pytest
from dramatiq.common import xq_name
from sqlalchemy import text

from infra import rabbit
from tests.harness import CLI_OPERATOR, ROOT, publish_raw, uid
from tests.infra.test_treasury_kit import add_provider, reset, usd

pytestmark = pytest.mark.e2e


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def on_terminal(env, answer: str, *args: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout/stderr, answer its question."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                            env=env.environ(COLUMNS="80"), stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"Go ahead?" in seen:
            os.write(master, answer.encode() + b"\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def fiat_min(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT min_amount FROM treasury_buffers "
                                 "WHERE account_type = 'system_buffer_fiat'")).scalar_one()


def actions(engine, command: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(
            "SELECT performed_by, command, target, detail FROM operator_actions "
            "WHERE command = :c ORDER BY id"), {"c": command})]


def test_a_lever_in_a_script_without_yes_is_refused_in_one_line_and_changes_nothing(env, engine):
    reset(engine)
    before = fiat_min(engine)
    done = cli(env, "buffers", "set", "system_buffer_fiat", "--min", str(before + 100), "--by", CLI_OPERATOR)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "refused: Set system_buffer_fiat thresholds to min 20,001.00 USD (was 20,000.00 USD) "
        "needs --yes when not run on a terminal"]
    assert fiat_min(engine) == before


def test_dry_run_shows_the_change_and_changes_nothing(env, engine):
    reset(engine)
    before = fiat_min(engine)
    done = cli(env, "buffers", "set", "system_buffer_fiat", "--min", str(usd(30_000)), "--by", CLI_OPERATOR,
               "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["dry_run"] is True and doc["before"]["min"] == before
    assert doc["after"]["min"] == usd(30_000)
    assert fiat_min(engine) == before
    human = cli(env, "buffers", "set", "system_buffer_fiat", "--min", str(usd(30_000)), "--by",
                CLI_OPERATOR, "--dry-run")
    assert human.stdout.strip() == ("dry run: would set system_buffer_fiat thresholds to min "
                                    "30,000.00 USD (was 20,000.00 USD)")
    # An impossible change is refused by the dry run too (min above target).
    assert cli(env, "buffers", "set", "system_buffer_fiat", "--min", str(usd(200_000)), "--by",
               CLI_OPERATOR, "--dry-run").returncode == 2
    name = add_provider(engine, priority=7)
    shown = json.loads(cli(env, "providers", "set", name, "--priority", "2", "--by", CLI_OPERATOR,
                           "--dry-run", "--json").stdout)
    assert shown == {"dry_run": True, "name": name, "before": {"priority": 7},
                     "after": {"priority": 2}}
    assert json.loads(cli(env, "providers", "--json").stdout)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT priority FROM conversion_providers WHERE name = :n"),
                            {"n": name}).scalar_one() == 7


def test_on_a_terminal_the_lever_asks_and_no_changes_nothing(env, engine):
    reset(engine)
    before = fiat_min(engine)
    code, screen = on_terminal(env, "n", "buffers", "set", "system_buffer_fiat", "--min",
                               str(usd(25_000)), "--by", CLI_OPERATOR)
    assert "Set system_buffer_fiat thresholds to min 25,000.00 USD (was 20,000.00 USD). Go ahead?" \
        in screen.replace("\r\n", " ").replace("\n", " ")
    assert code == 1 and fiat_min(engine) == before
    code, screen = on_terminal(env, "y", "buffers", "set", "system_buffer_fiat", "--min",
                               str(usd(25_000)), "--by", CLI_OPERATOR)
    assert code == 0, screen
    assert fiat_min(engine) == usd(25_000)
    [last] = actions(engine, "buffers set")[-1:]
    assert last["performed_by"] == CLI_OPERATOR and last["target"] == "system_buffer_fiat"
    assert (last["detail"]["before"]["min"], last["detail"]["after"]["min"]) == (before, usd(25_000))
    reset(engine)


@pytest.mark.parametrize("args", [
    ["buffers", "pause"], ["buffers", "resume"], ["buffers", "rebalance"],
    ["buffers", "set", "system_buffer_fiat", "--min", "1", "--yes"],
    ["providers", "pause", "x"], ["providers", "set", "x", "--priority", "1", "--yes"],
    ["dlq", "purge", "ballast.wallets", "--yes"], ["dlq", "replay", "--all", "--yes"],
])
def test_every_audited_lever_needs_by(env, args):
    done = cli(env, *args)
    assert done.returncode == 2 and "--by" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_forced_cancel_asks_and_dry_run_keeps_the_job(env, engine):
    reset(engine, broker=usd(250_000))
    add_provider(engine, priority=1)
    job = json.loads(cli(env, "conversions", "convert", "--from", "broker_operational", "--to",
                         "system_buffer_usdc", "--amount", str(usd(1_000)), "--by", CLI_OPERATOR,
                         "--json").stdout)
    dry = cli(env, "conversions", "cancel", str(job["job_id"]), "--by", CLI_OPERATOR, "--reason", "r",
              "--force", "--dry-run", "--json")
    assert json.loads(dry.stdout)["dry_run"] is True
    refused = cli(env, "conversions", "cancel", str(job["job_id"]), "--by", CLI_OPERATOR, "--reason", "r",
                  "--force")
    assert refused.returncode == 2 and "needs --yes" in refused.stderr
    shown = json.loads(cli(env, "conversions", "show", str(job["job_id"]), "--json").stdout)
    assert shown["status"] == "pending"
    done = cli(env, "conversions", "cancel", str(job["job_id"]), "--by", CLI_OPERATOR, "--reason", "r",
               "--force", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "cancelled"
    assert actions(engine, "conversions cancel")[-1]["target"] == str(job["job_id"])


def _dead(env, queue: str, actor: str) -> str:
    msg = dramatiq.Message(queue_name=queue, actor_name=actor, args=(),
                           kwargs={"request_id": uid("r")},
                           options={"dead_letter": {"reason": "test", "code": "refused",
                                                    "retries": 0, "failed_at": "2026-01-01T00:00:00+00:00"}})
    publish_raw(env, xq_name(queue), json.dumps(msg.asdict()).encode())
    return msg.message_id


def test_replay_all_without_a_queue_covers_every_queue_with_a_count(env, engine, clean_queues):
    _dead(env, "ballast.wallets", "deposit")
    _dead(env, "ballast.wallets", "withdraw")
    _dead(env, "ballast.markets", "open_market")
    dry = json.loads(cli(env, "dlq", "replay", "--all", "--by", CLI_OPERATOR, "--dry-run", "--json").stdout)
    assert dry == {"dry_run": True, "replayed": 0, "would_replay": 3,
                   "queues": {"ballast.wallets": 2, "ballast.markets": 1}}
    assert sum(rabbit.dead_letter_counts(env.broker_url).values()) == 3
    assert cli(env, "dlq", "replay", "--all", "--by", CLI_OPERATOR).returncode == 2  # no --yes
    done = cli(env, "dlq", "replay", "--all", "--by", CLI_OPERATOR, "--yes", "--json")
    assert json.loads(done.stdout) == {"replayed": 3,
                                       "queues": {"ballast.wallets": 2, "ballast.markets": 1}}
    ready = {r["queue"]: r["ready"] for r in rabbit.queue_stats(env.broker_url)}
    assert (ready["ballast.wallets"], ready["ballast.markets"]) == (2, 1)
    assert sum(rabbit.dead_letter_counts(env.broker_url).values()) == 0
    assert actions(engine, "dlq replay")[-1]["performed_by"] == CLI_OPERATOR
