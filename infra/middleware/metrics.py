"""Prometheus metrics of the workers, with one label scheme: ``queue`` and ``actor``.

Replaces Dramatiq's Prometheus middleware (whose labels are ``queue_name`` and
``actor_name``) so every Ballast metric is labelled alike (README, "Logs and metrics"):

- ``ballast_messages_total{queue,actor}``, ``ballast_message_errors_total{queue,actor}``,
  ``ballast_message_retries_total{queue,actor}``, ``ballast_messages_inprogress{queue,actor}``,
  ``ballast_message_duration_seconds{queue,actor}`` (histogram);
- ``ballast_dead_letters_total{queue,actor,code}``, ``ballast_duplicate_requests_total{queue,actor}``,
  ``ballast_worker_threads_replaced_total{kind}``;
- ``ballast_group_commits_total{actor,size}``, ``ballast_group_commit_fallbacks_total{actor}``
  (``infra.group_commit``);
- ``ballast_worker_heartbeat_timestamp_seconds{pid}``: each worker process's last beat (its
  thread watcher, every second, after it found every thread alive).

Multiprocess mode: every worker process writes its values to files in one directory per
pool (``PROMETHEUS_MULTIPROC_DIR``), made fresh by the pool's main process before it forks
(``prepare_metrics_dir``, called by ``infra.worker``); the exposition server, a fork of the
main process, reads them all.  It binds ``BALLAST_METRICS_PORT`` or, when another pool on
the host holds that one, the next free port of ``BALLAST_METRICS_PORT_SPAN`` (the port is
logged as ``metrics.listening``), and answers ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from infra.logs import get_logger
from infra.metrics_http import bind, serve
from infra.settings import get_settings

log = get_logger(__name__)

#: Created after the multiprocess directory is set (``after_process_boot``).
DEAD_LETTERS = None
DUPLICATES = None
GROUPED = None
GROUP_FALLBACKS = None
THREADS_REPLACED = None
HEARTBEAT = None
MESSAGES = None
ERRORS = None
RETRIES = None
INPROGRESS = None
DURATION = None

#: A worker process whose last beat is older than this is unhealthy (``/healthz``).
HEARTBEAT_STALE_S = 30.0  # s
HEARTBEAT_NAME = "ballast_worker_heartbeat_timestamp_seconds"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    float("inf"))  # s

_DIR_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def prepare_metrics_dir(path: str | None = None) -> str:
    """A fresh multiprocess directory for this pool, named in the environment the worker
    processes and the exposition fork inherit.  ``path`` (or ``BALLAST_METRICS_DIR``) is
    emptied first: values of a previous run must not be summed into this one's.  Without
    either, a new temporary directory (unique per pool, so two pools never share one)."""
    path = path or get_settings().metrics_dir
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    else:
        path = tempfile.mkdtemp(prefix="ballast-metrics-")
    for name in _DIR_ENV:
        os.environ[name] = path
    return path


def metrics_dir() -> str:
    """This pool's directory: the one its main process prepared, else (``dramatiq actors``
    run by hand) one named after the main process, shared by its children."""
    path = os.environ.get(_DIR_ENV[0])
    if not path:
        path = os.path.join(tempfile.gettempdir(), f"ballast-metrics-{os.getppid()}")
        os.makedirs(path, exist_ok=True)
        for name in _DIR_ENV:
            os.environ[name] = path
    return path


def _labels(message) -> tuple[str, str]:
    return q_name(message.queue_name), message.actor_name


class BallastMetrics(Middleware):
    """Declares the metrics once a worker process has booted; counts every message."""

    @property
    def forks(self):
        return [serve_worker_metrics]

    def after_process_boot(self, broker):
        global DEAD_LETTERS, DUPLICATES, GROUPED, GROUP_FALLBACKS, THREADS_REPLACED, HEARTBEAT
        global MESSAGES, ERRORS, RETRIES, INPROGRESS, DURATION

        metrics_dir()  # multiprocess mode must be on before prometheus_client is imported
        import prometheus_client as prom

        qa = ["queue", "actor"]
        MESSAGES = prom.Counter("ballast_messages_total", "Messages processed", qa, registry=None)
        ERRORS = prom.Counter("ballast_message_errors_total",
                              "Messages whose processing raised (refused or failed)", qa,
                              registry=None)
        RETRIES = prom.Counter("ballast_message_retries_total", "Retries enqueued", qa,
                               registry=None)
        INPROGRESS = prom.Gauge("ballast_messages_inprogress", "Messages being processed", qa,
                                registry=None, multiprocess_mode="livesum")
        DURATION = prom.Histogram("ballast_message_duration_seconds",
                                  "Time spent processing a message", qa,
                                  buckets=DURATION_BUCKETS, registry=None)
        DEAD_LETTERS = prom.Counter("ballast_dead_letters_total", "Messages dead-lettered",
                                    ["queue", "actor", "code"], registry=None)
        DUPLICATES = prom.Counter("ballast_duplicate_requests_total",
                                  "Requests already applied", qa, registry=None)
        GROUPED = prom.Counter("ballast_group_commits_total",
                               "Transactions of a group commit (infra.group_commit), by size",
                               ["actor", "size"], registry=None)
        GROUP_FALLBACKS = prom.Counter("ballast_group_commit_fallbacks_total",
                                       "Groups rolled back whose commands then ran alone",
                                       ["actor"], registry=None)
        THREADS_REPLACED = prom.Counter(
            "ballast_worker_threads_replaced_total",
            "Worker and consumer threads that died and were replaced", ["kind"], registry=None)
        for kind in ("worker", "consumer"):  # zero from the start, so increase() sees the first
            THREADS_REPLACED.labels(kind=kind)
        HEARTBEAT = prom.Gauge(HEARTBEAT_NAME,
                               "Last heartbeat of each worker process (Unix time)",
                               registry=None, multiprocess_mode="liveall")
        beat()

    def after_worker_shutdown(self, broker, worker):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), metrics_dir())

    def after_enqueue(self, broker, message, delay):
        # A retry goes to the delay queue (a delay, maybe 0); its later move to the queue
        # itself (no delay) is the same retry, not another.
        if RETRIES is not None and delay is not None and "retries" in message.options:
            RETRIES.labels(*_labels(message)).inc()

    def before_process_message(self, broker, message):
        if INPROGRESS is not None:
            INPROGRESS.labels(*_labels(message)).inc()
        message.ballast_metric_t0 = time.perf_counter()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if MESSAGES is None:
            return
        labels = _labels(message)
        t0 = getattr(message, "ballast_metric_t0", None)
        if t0 is not None:
            DURATION.labels(*labels).observe(time.perf_counter() - t0)
            INPROGRESS.labels(*labels).dec()
        MESSAGES.labels(*labels).inc()
        if exception is not None:
            ERRORS.labels(*labels).inc()

    after_skip_message = after_process_message


def beat() -> None:
    """This worker process is alive and its threads run (called by ``ThreadWatch``)."""
    if HEARTBEAT is not None:
        HEARTBEAT.set(time.time())


def metrics_middleware(port: int) -> list[Middleware]:
    """The worker's metrics middleware (exposition on ``port``, see ``serve_worker_metrics``)."""
    return [BallastMetrics()]


def worker_health(path: str | None = None, now: float | None = None) -> tuple[bool, dict]:
    """Healthy when at least one worker process of this pool beats and every live one beat
    within ``HEARTBEAT_STALE_S``.  Returns ``(ok, details)``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    now = time.time() if now is None else now
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path or metrics_dir())
    beats: dict[int, float] = {}
    for family in registry.collect():
        if family.name == HEARTBEAT_NAME:
            for sample in family.samples:
                beats[int(sample.labels["pid"])] = sample.value
    live = {pid: round(now - t, 1) for pid, t in beats.items() if _alive(pid)}
    ok = bool(live) and all(age < HEARTBEAT_STALE_S for age in live.values())
    return ok, {"service": "worker", "status": "ok" if ok else "unhealthy",
                "heartbeat_age_s": {str(pid): age for pid, age in sorted(live.items())},
                "stale_after_s": HEARTBEAT_STALE_S}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_worker_metrics() -> int:
    """The exposition fork: ``/metrics`` (every worker process's values) and ``/healthz``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    settings = get_settings()
    path = metrics_dir()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    try:
        server = bind(settings.metrics_host, settings.metrics_port, settings.metrics_port_span,
                      registry, lambda: worker_health(path))
    except OSError as exc:
        log.error("metrics.port_unavailable", port=settings.metrics_port,
                  span=settings.metrics_port_span, error=str(exc))
        return 1
    log.info("metrics.listening", port=server.server_address[1], host=settings.metrics_host,
             directory=path)
    serve(server)
    return 0
