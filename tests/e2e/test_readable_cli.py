"""The CLI as a person reads it (issue 17, "Readable output"), through the real executable
(``.venv/bin/ballast``) against the real services: 80 columns in a terminal, ids whole,
amounts in major units, tab-separated when piped, ``--format json`` the same as
``--json``, one-line errors, completion of queue and actor names, progress bars on a
terminal only, ``ballast worker --queues A B``."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from infra import rabbit
from infra.contract import ACTORS, QUEUES
from tests.harness import CLI_OPERATOR, ROOT, send, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

#: The installed console script, as an operator runs it.
BALLAST = str(Path(sys.executable).with_name("ballast"))
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
MOVES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
TRACEBACK = "Traceback (most recent call last)"


def piped(env, *args: str, stdin: str | None = None, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([BALLAST, *args], cwd=ROOT, env=env.environ(**overrides),
                          capture_output=True, text=True, timeout=120, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def terminal(env, *args: str, **overrides: str) -> tuple[int, str]:
    """Run the executable on a pseudo-terminal of 80 columns; what a person sees."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([BALLAST, *args], cwd=ROOT,
                            env=env.environ(COLUMNS="80", LINES="50", TERM="xterm", **overrides),
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def lines_of(screen: str) -> list[str]:
    """The screen's lines without colours and cursor movements (a bar's redraws are
    separate lines)."""
    return MOVES.sub("\n", COLOUR.sub("", screen)).split("\n")


def assert_fits(screen: str, limit: int = 80) -> list[str]:
    lines = lines_of(screen)
    wide = [ln for ln in lines if len(ln) > limit]
    assert not wide, wide
    return lines


def tokens(lines: list[str]) -> set[str]:
    return {t.strip(";,") for ln in lines for t in ln.split()}


@pytest.fixture
def customer(env, engine, worker):
    """A user with two deposits and one refused withdrawal (a dead letter)."""
    user = f"customer-{uid()}-0123456789"
    for amount in (1_234_567, 4_200):
        send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=amount,
             reference="bank transfer with a reference long enough to be folded by a table")
    rid = uid("w")
    send(env, "withdraw", request_id=rid, user_id=user, currency="USD", amount=1_500_000,
         reference="out")
    wait_until(lambda: [d for d in rabbit.list_dead_letters("ballast.wallets", 1000, env.broker_url)
                        if d.body.get("kwargs", {}).get("request_id") == rid])
    wait_quiet(env)
    letter = next(d for d in rabbit.list_dead_letters("ballast.wallets", 1000, env.broker_url)
                  if d.body.get("kwargs", {}).get("request_id") == rid)
    return {"user": user, "request_id": rid, "message_id": letter.message_id}


# --- people at 80 columns ------------------------------------------------------------------

def test_the_main_views_fit_80_columns_with_ids_whole_amounts_in_major_units(env, customer):
    user, message_id = customer["user"], customer["message_id"]

    code, screen = terminal(env, "wallet", "show", user)
    assert code == 0, screen
    lines = assert_fits(screen)
    assert user in tokens(lines)  # whole, on one line
    words = tokens(lines)
    assert "12,345.67" in words and "42.00" in words  # major units, not 1234567 / 4200
    assert "1234567" not in words
    assert "NGN" in words
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d", screen)  # to the second
    assert re.search(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", screen)
    # The amount column is right-aligned: both amounts end in the same column.
    ends = {ln.index(a) + len(a) for ln in lines for a in ("12,345.67", "42.00")
            if re.search(rf"(^|\s){re.escape(a)}(\s|$)", ln) and "deposit" in ln}
    assert len(ends) == 1, lines

    code, screen = terminal(env, "dlq", "list", "ballast.wallets")
    assert code == 0
    lines = assert_fits(screen)
    assert message_id in tokens(lines) and customer["request_id"] in tokens(lines)

    for view in (["queues"], ["alerts"], ["audit", "recent"], ["buffers"], ["producers", "list"],
                 ["ledger", "check"], ["guard", "limits"], ["outbox"], ["personas"],
                 ["dlq", "show", message_id]):
        code, screen = terminal(env, *view)
        assert code == 0, (view, screen)
        lines = assert_fits(screen) if view[0] != "dlq" else lines_of(screen)
        if view == ["queues"]:
            assert set(QUEUES) <= tokens(lines)
    assert screen.count(TRACEBACK) == 1  # dlq show: its traceback, once


def test_piped_output_is_tab_separated_and_format_json_is_the_json_document(env, customer):
    user = customer["user"]
    done = piped(env, "wallet", "show", user)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    header = lines.index(next(ln for ln in lines if ln.startswith("at\t")))
    columns = lines[header].split("\t")
    rows = [dict(zip(columns, ln.split("\t"))) for ln in lines[header + 1:]
            if ln and not ln.startswith("#")][:2]
    assert {(r["kind"], r["currency"], r["amount"]) for r in rows} == {
        ("deposit", "NGN", "12345.67"), ("deposit", "NGN", "42.00")}
    assert all(len(ln.split("\t")) == len(columns) for ln in lines[header + 1:]
               if ln and not ln.startswith("#"))

    for args in (["wallet", "show", user], ["dlq", "list"], ["queues"], ["alerts"],
                 ["buffers"], ["ledger", "check"]):
        as_json = json.loads(piped(env, *args, "--json").stdout)
        volatile = args[0] == "queues"  # rates move between two reads
        for other in (piped(env, *args, "--format", "json"),
                      piped(env, "--format", "json", *args)):
            assert other.returncode == 0, other.stderr
            doc = json.loads(other.stdout)
            if volatile:
                assert [r["queue"] for r in doc] == [r["queue"] for r in as_json]
            else:
                assert doc == as_json, args
    assert json.loads(piped(env, "wallet", "show", user, "--json").stdout)["balances"] == {
        "NGN": 1_234_567 + 4_200}  # minor units stay in JSON

    # --format forces a format whatever stdout is.
    plain = piped(env, "wallet", "show", user, "--format", "plain")
    assert "\t" not in plain.stdout and "12,345.67" in plain.stdout
    code, screen = terminal(env, "dlq", "list", "--format", "tsv")
    assert code == 0 and f"{customer['message_id']}\t" in screen


def test_wallet_show_of_an_unknown_user_says_so_on_stderr_and_exits_1(env):
    for args in (["wallet", "show", uid("nobody")], ["wallet", "show", uid("nobody"), "--json"]):
        done = piped(env, *args)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and "no wallet for user" in done.stderr


# --- errors: one line, no library noise ----------------------------------------------------

def _one_line(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert TRACEBACK not in done.stderr and '"logger"' not in done.stderr, done.stderr
    return done.stderr.strip()


def test_every_error_path_is_one_line_on_stderr(env):
    base = env.broker_url.rsplit("/", 1)[0]
    wrong_password = base.replace("guest:guest@", "guest:not-the-password@") + "/%2F"
    line = _one_line(piped(env, "dlq", "list", BALLAST_BROKER_URL=wrong_password), 1)
    assert "refused the login" in line and "not-the-password" not in line
    line = _one_line(piped(env, "dlq", "list", BALLAST_BROKER_URL=f"{base}/{uid('novhost')}"), 1)
    assert "vhost" in line and "does not exist" in line
    missing = env.database_url.rsplit("/", 1)[0] + f"/{uid('nodb')}"
    line = _one_line(piped(env, "ledger", "check", BALLAST_DATABASE_URL=missing), 1)
    assert "does not exist" in line and "BALLAST_DATABASE_URL" in line
    line = _one_line(piped(env, "queues", BALLAST_LOG_LEVEL="LOUD"), 2)
    assert line.startswith("error: BALLAST_LOG_LEVEL")
    assert _one_line(piped(env, "queues", BALLAST_METRICS_PORT="many"), 2).startswith(
        "error: BALLAST_METRICS_PORT")
    assert "--by" in _one_line(piped(env, "dlq", "replay", "--all"), 2)
    assert "--kwargs" in _one_line(piped(env, "send", "deposit"), 2)


def test_a_service_down_hint_names_the_setting_not_a_developer_box_command(env):
    down = "postgresql+psycopg://postgres@127.0.0.1:1/x"
    # Where pg_ctlcluster does not exist (a container, production): the setting to check.
    line = _one_line(piped(env, "ledger", "check", BALLAST_DATABASE_URL=down,
                           PATH=str(Path(sys.executable).parent)), 1)
    assert "PostgreSQL is unreachable at 127.0.0.1:1" in line
    assert "BALLAST_DATABASE_URL" in line and "pg_ctlcluster" not in line

    from infra import services

    assert "pg_ctlcluster" not in services.hint("PostgreSQL", "db.internal")
    assert "rabbitmq-server" not in services.hint("RabbitMQ", "10.0.0.7")


# --- completion ----------------------------------------------------------------------------

def complete(env, words: str) -> list[str]:
    done = subprocess.run([BALLAST], env=env.environ(
        _BALLAST_COMPLETE="bash_complete", COMP_WORDS=words,
        COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1))),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return [ln.split(",", 1)[1] for ln in done.stdout.splitlines() if "," in ln]


def test_the_shell_completes_actor_and_queue_names(env):
    assert "deposit" in complete(env, "ballast send dep")
    assert set(complete(env, "ballast send ")) == set(ACTORS)
    assert complete(env, "ballast dlq list ballast.wa") == ["ballast.wallets"]
    assert complete(env, "ballast worker --queues ballast.wallets ballast.jo") == ["ballast.journal"]
    assert "withdraw" in complete(env, "ballast dlq list --actor with")
    assert "dlq" in complete(env, "ballast dl")
    script = subprocess.run([BALLAST], env=env.environ(_BALLAST_COMPLETE="bash_source"),
                            capture_output=True, text=True, timeout=60).stdout
    assert "_BALLAST_COMPLETE=bash_complete" in script


# --- progress --------------------------------------------------------------------------------

def _journal_file(tmp_path: Path, n: int) -> Path:
    base = uid("j")
    entries = [{"journal_id": f"{base}-{i}", "character_id": 9_000_001, "date": "2026-11-30T10:00:00Z",
                "ref_type": "player_donation", "amount": 100 + i, "reason": f"memo {i}",
                "first_party_id": 9_000_001, "second_party_id": 7} for i in range(n)]
    path = tmp_path / "journal.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_long_operations_show_a_bar_on_a_terminal_and_nothing_when_piped(env, engine, tmp_path,
                                                                        clean_queues):
    from domain.ledger import Posting
    from infra import ledger

    with engine.begin() as conn:  # a ledger of a few hundred transactions
        for _ in range(300):
            ledger.post(conn, [Posting("world:NGN", "NGN", -1),
                               Posting(f"user:{uid()}:NGN", "NGN", 1)], kind="test")
        n_txn = conn.execute(text("SELECT count(*) FROM ledger_transactions")).scalar_one()

    done = piped(env, "ledger", "check")
    assert done.returncode == 0 and done.stderr == ""  # no bar, no noise
    assert re.fullmatch(rf"ledger OK: {n_txn:,} transactions, [\d,]+ entries\n", done.stdout)
    code, screen = terminal(env, "ledger", "check")
    assert code == 0
    seen = lines_of(screen)
    bar = [ln for ln in seen if ln.startswith("ledger check") and "━" in ln]
    assert bar and any(f"{n_txn + 5}/{n_txn + 5}" in ln and "left" in ln for ln in bar), seen
    assert_fits(screen)

    path = _journal_file(tmp_path, 1200)
    done = piped(env, "journal", "import", str(path), "--batch", "500")
    assert done.returncode == 0 and done.stderr == ""
    assert "━" not in done.stdout and "sent 1200 entries as 3" in done.stdout
    code, screen = terminal(env, "journal", "import", str(path), "--batch", "500",
                            "--request-id", uid("again"))
    assert code == 0
    assert any(ln.startswith("journal import") and "1200/1200" in ln
               for ln in lines_of(screen)), screen
    assert rabbit.queue_stats(env.broker_url)  # the broker answered throughout


def test_journal_import_validates_every_batch_before_sending_any(env, tmp_path, clean_queues):
    path = _journal_file(tmp_path, 30)
    doc = json.loads(path.read_text())
    doc["entries"][25]["amount"] = 1.5
    path.write_text(json.dumps(doc))
    done = piped(env, "journal", "import", str(path), "--batch", "10")
    line = _one_line(done, 2)
    assert line.startswith("entries 21-30:")
    stats = {r["queue"]: r["ready"] for r in rabbit.queue_stats(env.broker_url)}
    assert stats["ballast.journal"] == 0


def test_replay_all_shows_its_bar_on_a_terminal(env, customer):
    code, screen = terminal(env, "dlq", "replay", "ballast.wallets", "--all", "--yes",
                            "--by", CLI_OPERATOR)
    assert code == 0, screen
    assert any(ln.startswith("dlq replay") and "━" in ln for ln in lines_of(screen)), screen
    assert "replayed" in screen


def test_matching_run_shows_its_bar_on_a_terminal_and_nothing_when_piped(env, clean_queues):
    done = piped(env, "matching", "run")
    assert done.returncode == 0 and done.stderr == "" and "━" not in done.stdout
    code, screen = terminal(env, "matching", "run")
    assert code == 0, screen
    bar = [ln for ln in lines_of(screen) if ln.startswith("matching") and "━" in ln]
    assert bar and any("4/4" in ln for ln in bar), screen


# --- the worker command ------------------------------------------------------------------

def test_worker_takes_queues_a_b_and_dramatiq_flags(env, clean_queues, tmp_path):
    import socket
    import urllib.request

    with socket.socket() as s:  # a port of this pool's own, not BALLAST_METRICS_PORT's
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pid_file = tmp_path / "worker.pid"
    proc = subprocess.Popen([BALLAST, "worker", "--queues", "ballast.journal", "ballast.markets",
                             "--processes", "1", "--threads", "1", "--metrics-port", str(port),
                             "--worker-shutdown-timeout", "5000", "--pid-file", str(pid_file)],
                            cwd=ROOT, env=env.environ(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def consumers():
            stats = {r["queue"]: r["consumers"] for r in rabbit.queue_stats(env.broker_url)}
            return stats if stats["ballast.journal"] and stats["ballast.markets"] else None

        stats = wait_until(consumers, timeout=90, what="the worker to consume its two queues")
        assert stats["ballast.wallets"] == 0 and stats["ballast.treasury"] == 0
        assert int(pid_file.read_text().strip()) == proc.pid  # --pid-file was passed through

        def exposition():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return r.status
            except OSError:
                return None

        # BALLAST_METRICS_PORT is 0 in the tests' environment: only --metrics-port opens it.
        assert wait_until(exposition, timeout=60, what="the pool's metrics port") == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert _one_line(piped(env, "worker", "--queues", "no.such.queue"), 2).startswith(
        "unknown queue")
    assert "--queues" in _one_line(piped(env, "worker", "ballast.journal"), 2)


def test_migrate_and_matching_show_their_bars_on_a_terminal_only(env):
    from infra.db.migrate import drop_database

    url = env.database_url.rsplit("/", 1)[0] + f"/ballast_test_{uid('bar')}"
    try:
        code, screen = terminal(env, "migrate", BALLAST_DATABASE_URL=url)
        assert code == 0, screen
        bars = [ln for ln in lines_of(screen) if ln.startswith("migrate") and "━" in ln]
        heads = re.findall(r"(\d+)/(\d+)", " ".join(bars))
        assert heads and heads[-1][0] == heads[-1][1] and int(heads[-1][1]) >= 10, bars
        again = piped(env, "migrate", BALLAST_DATABASE_URL=url)
        assert again.returncode == 0 and again.stderr == "" and "━" not in again.stdout
    finally:
        drop_database(url)

    code, screen = terminal(env, "matching", "run")
    assert code == 0, screen
    assert any(ln.startswith("matching") and "4/4" in ln for ln in lines_of(screen)), screen
    done = piped(env, "matching", "run")
    assert done.returncode == 0 and done.stderr == "" and "━" not in done.stdout
    assert done.stdout.splitlines()[0] == "# matching run"
