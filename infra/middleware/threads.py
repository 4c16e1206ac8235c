"""Replace a worker's dead threads, and say so (a metric, a log line and an alert).

The envelope check keeps malformed messages away from Dramatiq, but a thread can
still die of something nobody foresaw; Dramatiq would then run on with one thread
less, silently, until none is left.  ``ThreadWatch`` looks at the worker's threads
every ``WATCH_INTERVAL_S``: a worker or consumer thread that has stopped although
it was not told to is replaced, ``ballast_worker_threads_replaced_total{kind}`` is
incremented and a ``worker_thread_replaced`` alert is raised (one open alert per
worker process, refreshed with the running count and the last error).
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from dramatiq.middleware import Middleware

from infra import alerts
from infra.logs import get_logger
from infra.middleware import metrics
from infra.settings import get_settings

log = get_logger(__name__)

WATCH_INTERVAL_S = 1.0  # s between two looks at the threads


class ThreadWatch(Middleware):
    """Starts a watcher thread once the worker has booted; stops it at shutdown."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.replaced = 0
        self.last_errors: dict[str, str] = {}

    def after_worker_boot(self, broker, worker) -> None:
        self._stop.clear()
        hook = threading.excepthook

        def remember(args):
            name = getattr(args.thread, "name", "?")
            self.last_errors[name] = f"{args.exc_type.__name__}: {args.exc_value}"[:300]
            hook(args)

        threading.excepthook = remember
        self._watcher = threading.Thread(target=self._watch, args=(worker,), daemon=True,
                                         name="ballast-thread-watch")
        self._watcher.start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self._stop.set()

    def _watch(self, worker) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.check(worker)
                metrics.beat()  # the heartbeat: this process runs and has replaced any dead thread
            except Exception as exc:  # the watcher itself must not die
                log.error("worker.thread_watch_failed", error=f"{type(exc).__name__}: {exc}")

    def check(self, worker) -> int:
        """Replace every thread of ``worker`` that died while it was meant to run."""
        dead = []
        for thread in list(worker.workers):
            if thread.running and not thread.is_alive():
                worker.workers.remove(thread)
                worker._add_worker()
                dead.append(("worker", thread.name))
        for queue, thread in list(worker.consumers.items()):
            if thread.running and not thread.is_alive():
                try:
                    thread.close()  # its unacknowledged messages go back to RabbitMQ
                except Exception:
                    pass
                del worker.consumers[queue]
                worker._add_consumer(queue, delay=queue.endswith(".DQ"))
                dead.append(("consumer", f"{thread.name} ({queue})"))
        for kind, name in dead:
            self.replaced += 1
            error = self.last_errors.pop(name, "unknown error")
            log.error("worker.thread_replaced", kind=kind, thread=name, error=error,
                      replaced=self.replaced)
            _count(kind)
            _alert(worker.broker, kind, name, error, self.replaced)
        return len(dead)


def _count(kind: str) -> None:
    if metrics.THREADS_REPLACED is not None:
        metrics.THREADS_REPLACED.labels(kind=kind).inc()


def _alert(broker, kind: str, name: str, error: str, replaced: int) -> None:
    worker = f"{socket.gethostname()}:{os.getpid()}"
    alerts.raise_alone(broker, alerts.Alert(
        "worker_thread_replaced", "critical",
        f"worker {worker} replaced {replaced} dead thread(s); last: {kind} thread, {error}"[:300],
        f"worker_thread_replaced:{worker}",
        {"worker": worker, "replaced": replaced, "kind": kind, "thread": name, "error": error}),
        failed_event="worker.thread_alert_failed")


class SwitchInterval(Middleware):
    """A worker process hands the GIL over every ``BALLAST_WORKER_SWITCH_INTERVAL_US``
    (default 500 µs; Python's own is 5,000 µs).

    A worker thread that got its statement's answer from PostgreSQL must take the GIL back
    before it can send the next one; while another thread runs Python, it waits until that
    thread is asked to let go — up to the whole switch interval.  A step of ten round trips
    would so wait up to ten intervals, holding its row locks (a challenge's, an escrow's,
    ``treasury:{CUR}``) all the while, and every step queued on those locks waits too.
    """

    def after_worker_boot(self, broker, worker) -> None:
        interval_us = get_settings().worker_switch_interval_us
        if interval_us:
            sys.setswitchinterval(interval_us / 1_000_000)
