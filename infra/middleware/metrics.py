"""Prometheus metrics of the workers: Dramatiq's own, plus Ballast's counters."""

from __future__ import annotations

import os

from dramatiq.middleware import Middleware

#: Created after the exposition's multiprocess directory is set (see below).
DEAD_LETTERS = None
DUPLICATES = None
THREADS_REPLACED = None


class BallastMetrics(Middleware):
    """Declares Ballast's counters once the worker process has booted."""

    def after_process_boot(self, broker):
        global DEAD_LETTERS, DUPLICATES, THREADS_REPLACED
        from dramatiq.middleware.prometheus import DB_PATH

        # "after" hooks run in reverse middleware order, so this may run before
        # Dramatiq's Prometheus middleware: multiprocess mode must be on before
        # prometheus_client is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = DB_PATH
        os.environ["prometheus_multiproc_dir"] = DB_PATH
        import prometheus_client as prom

        DEAD_LETTERS = prom.Counter(
            "ballast_dead_letters_total", "Messages dead-lettered", ["queue", "actor", "code"]
        )
        DUPLICATES = prom.Counter(
            "ballast_duplicate_requests_total", "Requests already applied", ["actor"]
        )
        THREADS_REPLACED = prom.Counter(
            "ballast_worker_threads_replaced_total",
            "Worker and consumer threads that died and were replaced", ["kind"]
        )


def metrics_middleware(port: int) -> list[Middleware]:
    """Dramatiq's Prometheus middleware (exposition on ``port``) and Ballast's counters."""
    os.environ.setdefault("dramatiq_prom_port", str(port))
    os.environ.setdefault("dramatiq_prom_db", f"/tmp/ballast-prometheus-{port}")
    os.makedirs(os.environ["dramatiq_prom_db"], exist_ok=True)
    from dramatiq.middleware.prometheus import Prometheus

    return [Prometheus(), BallastMetrics()]
