"""Logs and metrics as an operator meets them (issue 17, "Logs and metrics").

One real worker pool (with the test-only failing actors) and one real scheduler run on the
run's services; a good deposit, a refused withdrawal, an invalid deposit carrying a 100 KB
kwarg and a failing message go through.  Then: every line either process wrote is one JSON
document naming its logger, pid and service, a traceback is text in it, no kwarg value of
the big payload (nor the refused command's reference) is in any line, a refusal is not an
error; the metrics are scraped from the running processes' /metrics, the dashboard and the
alert rules name only metrics that exist, and /healthz answers for compose.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.e2e.flaky_actors import QUEUE as FLAKY
from tests.harness import ROOT, Worker, publish_raw, purge_all, send, uid, wait_until

pytestmark = pytest.mark.e2e

BIG = "Q" * 100_000  # a 100 KB kwarg: no log line may carry it


def free_port(span: int = 1) -> int:
    """A port with ``span`` free ports from it (best effort)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span < 65535 and all(_free(p) for p in range(port, port + span)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def names_in(exposition: str) -> set[str]:
    """Every series name a /metrics page offers: its samples, and each declared family with
    the names its type implies (a histogram's _bucket, _sum and _count; a counter's _total)."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", exposition, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
    return names


def sample(exposition: str, name: str, **labels: str) -> float | None:
    for line in exposition.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return None


class Scheduler:
    """A real ``ballast scheduler`` process."""

    def __init__(self, env, **extra: str) -> None:
        self.env = env
        self.log_path = Path(env.fault_dir) / f"scheduler-{uid()}.log"
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Scheduler":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli.main", "scheduler"], cwd=ROOT,
            env=self.env.environ(**self.extra), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def traffic(env):
    """A pool and a scheduler after a good, a refused, an invalid (100 KB) and a failing
    message; yields what the tests read."""
    from infra import deadletter_log
    from infra.db.engine import get_engine

    purge_all(env)
    with get_engine(env.database_url).begin() as conn:
        for q in ("ballast.wallets", FLAKY):
            deadletter_log.mark_purged(conn, q, "tests")
    worker_port, sched_port = free_port(2), free_port(2)
    metrics_dir = tempfile.mkdtemp(prefix="ballast-metrics-test-")
    w = Worker(env, modules=["tests.e2e.flaky_actors"], queues=["ballast.wallets", FLAKY],
               BALLAST_METRICS_PORT=str(worker_port), BALLAST_METRICS_HOST="127.0.0.1",
               BALLAST_METRICS_DIR=metrics_dir, BALLAST_RETRY_MAX_RETRIES="1")
    sched = Scheduler(env, BALLAST_SCHEDULER_METRICS_PORT=str(sched_port),
                      BALLAST_METRICS_HOST="127.0.0.1")
    w.start()
    sched.start()
    try:
        user, key, secret = uid("u"), uid("k"), uid("PERSONAL-REF")
        good = uid("good")
        send(env, "deposit", request_id=good, user_id=user, currency="NGN", amount=500,
             reference="bank")
        # The same command again is a duplicate (counted, nothing done).
        send(env, "deposit", request_id=good, user_id=user, currency="NGN", amount=500,
             reference="bank")
        refused = uid("refused")
        send(env, "withdraw", request_id=refused, user_id=user, currency="NGN",
             amount=10**9, reference=secret)
        invalid = uid("invalid")
        send(env, "deposit", request_id=invalid, user_id=user, currency="NGN", amount=5,
             reference=BIG)
        import dramatiq

        msg = dramatiq.Message(queue_name=FLAKY, actor_name="explodes", args=(),
                               kwargs={"key": key, "blob": BIG}, options={})
        publish_raw(env, FLAKY, json.dumps(msg.asdict()).encode())
        retried = uid("k")  # fails once, then succeeds on its retry
        publish_raw(env, FLAKY, json.dumps(dramatiq.Message(
            queue_name=FLAKY, actor_name="transient_once", args=(), kwargs={"key": retried},
            options={}).asdict()).encode())

        def settled():
            with get_engine(env.database_url).connect() as conn:
                from sqlalchemy import text

                dead = conn.execute(text(
                    "SELECT request_id, message_id FROM dead_letters WHERE status = 'dead'")).all()
            got = {r.request_id for r in dead} | {r.message_id for r in dead}
            log = w.log()
            return ({refused, invalid, msg.message_id} <= got
                    and log.count('"message.processed"') >= 3 and "request.duplicate" in log)

        wait_until(settled, 60, what="the four messages processed or dead-lettered")
        # The scheduler's gauges (its heartbeat, last firings) appear once it has ticked.
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{sched_port}/healthz", timeout=5)
                   .status_code == 200, 60, what="the scheduler's /healthz")
        wait_until(lambda: sample(scrape(sched_port), "ballast_schedule_last_fired_timestamp_seconds",
                                  schedule="outbox_sweep"), 60, what="the outbox sweep fired")
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{worker_port}/healthz", timeout=5)
                   .status_code == 200, 60, what="the worker's /healthz")
        yield {"worker": w, "scheduler": sched, "worker_port": worker_port,
               "scheduler_port": sched_port, "secret": secret, "refused": refused,
               "invalid": invalid, "failing": msg.message_id, "metrics_dir": metrics_dir,
               "good": good}
    finally:
        sched.stop()
        w.stop()
        client = redis.Redis.from_url(env.redis_url)
        for k in client.scan_iter("ballast:scheduler:*"):
            client.delete(k)
        purge_all(env)


def docs_of(text: str) -> list[dict]:
    docs = []
    for line in text.splitlines():
        doc = json.loads(line)  # every line is one JSON document
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def test_every_line_a_worker_and_a_scheduler_write_is_json_with_logger_pid_and_service(traffic):
    worker, sched = docs_of(traffic["worker"].log()), docs_of(traffic["scheduler"].log())
    for docs, service in ((worker, "worker"), (sched, "scheduler")):
        assert docs
        for d in docs:
            assert d["service"] == service, d
            assert isinstance(d["pid"], int) and d["logger"] and d["event"], d
    # Dramatiq's own lines too, from several processes of the pool (main, worker, fork).
    assert any(d["logger"].startswith("dramatiq") for d in worker)
    assert len({d["pid"] for d in worker}) >= 2
    assert any(d["event"] == "metrics.listening" for d in worker)
    assert any(d["event"] == "scheduler.fired" for d in sched)


def test_a_failure_logs_its_traceback_as_text_and_a_refusal_is_not_an_error(traffic):
    docs = docs_of(traffic["worker"].log())
    failing = [d for d in docs if d.get("level") == "error" and "exception" in d
               and "exploded" in d["exception"]]
    assert failing, "the failure is an error with its traceback"
    assert all(d["exception"].startswith("Traceback (most recent call last):") for d in failing)
    assert any(f"explodes[{traffic['failing']}]" in d["event"] for d in failing)
    refused = [d for d in docs if d.get("request_id") == traffic["refused"]]
    assert any(d["event"] == "message.dead_lettered" for d in refused)
    assert refused and all(d["level"] in ("info", "warning") for d in refused), refused
    assert not any("exception" in d for d in refused)
    invalid = [d for d in docs if d.get("request_id") == traffic["invalid"]]
    assert invalid and all(d["level"] in ("info", "warning") for d in invalid), invalid


def test_no_line_carries_a_kwarg_value_of_the_payloads(traffic):
    text = traffic["worker"].log() + traffic["scheduler"].log()
    assert "Q" * 50 not in text, "a piece of the 100 KB kwarg is in a log line"
    assert traffic["secret"] not in text, "the refused command's reference is in a log line"


def test_worker_metrics_use_one_label_scheme_and_the_health_endpoint_answers(traffic):
    text = scrape(traffic["worker_port"])
    assert sample(text, "ballast_messages_total", queue="ballast.wallets", actor="deposit") >= 3
    assert sample(text, "ballast_message_errors_total", queue=FLAKY, actor="explodes") == 2
    assert sample(text, "ballast_message_retries_total", queue=FLAKY, actor="transient_once") == 1
    assert sample(text, "ballast_duplicate_requests_total", queue="ballast.wallets",
                  actor="deposit") == 1
    assert sample(text, "ballast_dead_letters_total", queue="ballast.wallets",
                  actor="withdraw") == 1
    assert sample(text, "ballast_message_duration_seconds_count", queue="ballast.wallets",
                  actor="deposit") >= 1
    assert sample(text, "ballast_worker_threads_replaced_total", kind="worker") == 0
    assert sample(text, "ballast_worker_heartbeat_timestamp_seconds") > 0
    # One scheme: queue and actor, never Dramatiq's queue_name/actor_name.
    assert "queue_name=" not in text and "actor_name=" not in text
    health = httpx.get(f"http://127.0.0.1:{traffic['worker_port']}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["heartbeat_age_s"]  # one entry per live worker process


def test_the_scheduler_exports_heartbeat_last_firings_and_the_database_gauges(traffic):
    import time

    text = scrape(traffic["scheduler_port"])
    assert sample(text, "ballast_database_up") == 1 and sample(text, "ballast_redis_up") == 1
    assert time.time() - sample(text, "ballast_scheduler_heartbeat_timestamp_seconds") < 3600
    assert sample(text, "ballast_scheduler_lease_held") == 1
    assert sample(text, "ballast_schedule_period_seconds", schedule="outbox_sweep") == 10
    assert sample(text, "ballast_schedule_period_seconds", schedule="daily_summary") == 86400
    # The refused and the invalid deposit are in the durable log, not replayed.
    assert sample(text, "ballast_dead_letters_open", queue="ballast.wallets") >= 2
    assert sample(text, "ballast_dead_letters_open", queue="ballast.markets") is not None
    assert sample(text, "ballast_outbox_pending") is not None
    assert sample(text, "ballast_conversion_jobs_stale") is not None
    assert "# TYPE ballast_conversion_duration_seconds histogram" in text
    # Buffers exist once configured; the family is declared regardless.
    assert "# TYPE ballast_buffer_balance gauge" in text
    health = httpx.get(f"http://127.0.0.1:{traffic['scheduler_port']}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["lease_held"] is True


def promql_names(expr: str) -> set[str]:
    """The Ballast metric names a PromQL expression uses (label values and strings aside)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b(ballast_[a-zA-Z0-9_:]*)", expr))


def shipped_exprs() -> dict[str, list[str]]:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    exprs = {"rules": [r["expr"] for g in rules["groups"] for r in g["rules"]]}
    dashboard = json.loads((ROOT / "deploy/grafana/ballast.json").read_text())
    exprs["dashboard"] = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs


def test_the_dashboard_and_the_alert_rules_name_only_metrics_the_processes_expose(traffic):
    exposed = names_in(scrape(traffic["worker_port"])) | names_in(scrape(traffic["scheduler_port"]))
    for where, exprs in shipped_exprs().items():
        assert exprs, where
        used = set().union(*(promql_names(e) for e in exprs))
        assert used, where
        assert sorted(used - exposed) == [], f"{where} names metrics nobody exposes"
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    # The monitors of the monitor: a dead scheduler or worker pool is seen from outside.
    assert "ballast_scheduler_heartbeat_timestamp_seconds" in alerts["BallastSchedulerDown"]["expr"]
    assert "ballast_worker_heartbeat_timestamp_seconds" in alerts["BallastWorkerDown"]["expr"]
    assert "ballast_schedule_last_fired_timestamp_seconds" in alerts["BallastScheduleNotFiring"]["expr"]


def test_the_name_check_would_catch_a_metric_that_does_not_exist(traffic):
    exposed = names_in(scrape(traffic["worker_port"]))
    assert promql_names('rate(ballast_no_such_thing_total{queue="x"}[5m])') - exposed == {
        "ballast_no_such_thing_total"}


def test_two_pools_on_one_host_take_two_ports_and_a_pool_starts_from_a_clean_directory(env, traffic):
    port, metrics_dir = traffic["worker_port"], traffic["metrics_dir"]
    # A second pool with the same base port while the first one runs: the next free port.
    second = Worker(env, queues=["ballast.markets"], BALLAST_METRICS_PORT=str(port),
                    BALLAST_METRICS_HOST="127.0.0.1")
    second.start()
    try:
        line = wait_until(lambda: [d for d in docs_of(second.log())
                                   if d["event"] == "metrics.listening"], 30, what="its port")
        assert line[0]["port"] == port + 1
        assert httpx.get(f"http://127.0.0.1:{port + 1}/healthz", timeout=5).status_code in (200, 503)
        assert sample(scrape(port), "ballast_messages_total", actor="deposit") >= 2  # unchanged
    finally:
        second.stop()
    # The first pool's values stay in its directory after it stops; a pool started on that
    # directory begins from nothing.
    traffic["worker"].stop()
    assert any(name.endswith(".db") for name in os.listdir(metrics_dir))
    third = Worker(env, queues=["ballast.wallets"], BALLAST_METRICS_PORT=str(port),
                   BALLAST_METRICS_HOST="127.0.0.1", BALLAST_METRICS_DIR=metrics_dir)
    third.start()
    try:
        text = wait_until(lambda: scrape(port), 30, what="the third pool's /metrics")
        assert sample(text, "ballast_messages_total", actor="deposit") is None
        assert sample(text, "ballast_message_errors_total", actor="explodes") is None
    finally:
        third.stop()
