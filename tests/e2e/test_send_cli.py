"""``ballast send --kwargs @file.json`` and ``--kwargs -`` (stdin), through the executable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import ROOT, amqp, uid

pytestmark = pytest.mark.e2e


def cli(env, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli.main", *args], cwd=ROOT,
                          env=env.environ(), capture_output=True, text=True, timeout=120,
                          input=stdin)


def taken(env) -> dict | None:
    conn = amqp(env)
    try:
        method, _, body = conn.channel().basic_get("ballast.wallets", auto_ack=True)
    finally:
        conn.close()
    return json.loads(body) if method else None


def deposit() -> dict:
    return {"request_id": uid("r"), "user_id": uid(), "currency": "NGN", "amount": 900,
            "reference": "file"}


def test_kwargs_from_a_file(env, clean_queues, tmp_path):
    kwargs = deposit()
    path = tmp_path / "deposit.json"
    path.write_text(json.dumps(kwargs, indent=2))
    done = cli(env, "send", "deposit", "--kwargs", f"@{path}", "--json")
    assert done.returncode == 0, done.stderr
    message = taken(env)
    assert message["message_id"] == json.loads(done.stdout)["message_id"]
    assert message["kwargs"] == kwargs


def test_kwargs_from_stdin(env, clean_queues):
    kwargs = deposit()
    done = cli(env, "send", "deposit", "--kwargs", "-", "--json", stdin=json.dumps(kwargs))
    assert done.returncode == 0, done.stderr
    assert taken(env)["kwargs"] == kwargs


def test_a_missing_file_or_bad_stdin_is_one_line_and_sends_nothing(env, clean_queues, tmp_path):
    missing = cli(env, "send", "deposit", "--kwargs", f"@{tmp_path / 'nope.json'}")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"--kwargs @{tmp_path / 'nope.json'}: cannot read {tmp_path / 'nope.json'}: "
        "No such file or directory"]
    bad = cli(env, "send", "deposit", "--kwargs", "-", stdin="{not json")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not JSON" in bad.stderr
    assert taken(env) is None
