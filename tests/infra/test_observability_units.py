"""The pieces of logs and metrics that need no worker: health verdicts, the line format."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import dramatiq

from infra import logs
from infra.exporter import SCHEDULER_STALE_S, scheduler_health
from infra.middleware.metrics import HEARTBEAT_STALE_S, worker_health

BEAT = """
import os, sys, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
import prometheus_client as prom
g = prom.Gauge("ballast_worker_heartbeat_timestamp_seconds", "beat", registry=None,
               multiprocess_mode="liveall")
g.set(float(sys.argv[2]))
print("ready", flush=True)
time.sleep(120)
"""


def test_worker_health_wants_every_live_process_fresh_and_at_least_one():
    path = tempfile.mkdtemp(prefix="beat-")
    assert worker_health(path)[0] is False  # nobody beats yet
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", BEAT, path, str(t0)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        ok, doc = worker_health(path, now=t0 + 1)
        assert ok and doc["heartbeat_age_s"] == {str(proc.pid): 1.0}
        ok, doc = worker_health(path, now=t0 + HEARTBEAT_STALE_S + 1)
        assert not ok and doc["status"] == "unhealthy"  # alive but stuck
    finally:
        proc.kill()
        proc.wait()
    ok, doc = worker_health(path, now=t0 + 1)
    assert not ok and doc["heartbeat_age_s"] == {}  # a dead process's beat does not count


class _Sched:
    instance_id, leader = "sched-x", True

    def __init__(self, at):
        self.last_tick_at = at


def test_scheduler_health_follows_its_last_tick():
    now = 1_000_000.0
    assert scheduler_health(_Sched(now - 1), now)[0] is True
    assert scheduler_health(_Sched(now - SCHEDULER_STALE_S - 1), now)[0] is False
    ok, doc = scheduler_health(_Sched(None), now)
    assert not ok and doc["heartbeat_age_s"] is None


def _lines(emit) -> list[dict]:
    out = io.StringIO()
    logs.configure_logging(fmt="json", level="INFO", stream=out, service="worker")
    try:
        emit()
    finally:
        logs.configure_logging(fmt="json", level="WARNING")
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_dramatiq_message_in_a_stdlib_line_is_named_by_actor_and_id_only():
    msg = dramatiq.Message(queue_name="q", actor_name="deposit", args=(),
                           kwargs={"reference": "PERSONAL-DATA", "rows": ["x"] * 5000}, options={})
    (line,) = _lines(lambda: logging.getLogger("dramatiq.worker.WorkerThread").info(
        "Failed to process message %s with expected exception %s.", msg, "Refused"))
    assert line["event"] == f"Failed to process message deposit[{msg.message_id}] with expected exception Refused."
    assert (line["logger"], line["service"], line["pid"]) == (
        "dramatiq.worker.WorkerThread", "worker", os.getpid())
    assert "PERSONAL-DATA" not in json.dumps(line)


def test_an_exception_is_text_and_a_cut_line_keeps_logger_pid_and_service():
    def emit():
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("pika.adapters").exception("lost")
        logs.get_logger("infra.test").warning("huge", **{f"k{i}": "v" * 900 for i in range(40)})

    failed, huge = _lines(emit)
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in failed["exception"] and failed["logger"] == "pika.adapters"
    assert huge["truncated"] and len(json.dumps(huge)) <= logs.MAX_LINE_CHARS
    assert (huge["logger"], huge["service"], huge["pid"]) == ("infra.test", "worker", os.getpid())


def test_the_service_comes_from_the_command():
    assert logs.guess_service(["/x/infra/worker.py", "actors"]) == "worker"
    assert logs.guess_service(["/usr/bin/ballast", "scheduler"]) == "scheduler"
    assert logs.guess_service(["/usr/bin/ballast", "web", "--port", "1"]) == "console"
    assert logs.guess_service(["/usr/bin/ballast", "dlq", "list"]) == "cli"
