"""The worker command: Dramatiq's CLI, with Ballast's log lines in every process.

``python -m infra.worker actors [dramatiq options]`` is ``dramatiq actors ...`` except
that the main process, each worker process and the metrics fork log through
``infra.logs`` (one JSON line per record, bounded, one lock) instead of Dramatiq's
plain-text ``basicConfig``.  Each process still writes to its own pipe, and the main
process's log watcher is the only writer of the final stream, so lines from
different processes never interleave either.

With ``BALLAST_METRICS_PORT`` set, the main process first makes the pool's Prometheus
multiprocess directory fresh (``infra.middleware.metrics.prepare_metrics_dir``) and
removes a temporary one when the pool stops.
"""

from __future__ import annotations

import shutil
import sys

import dramatiq.cli as dramatiq_cli
from dramatiq.logging import get_logger

from infra.logs import configure_logging
from infra.middleware.metrics import prepare_metrics_dir
from infra.settings import get_settings


def _parent_logging(args, *, stream=sys.stderr):
    configure_logging(stream=stream, service="worker")
    return get_logger("dramatiq", "MainProcess")


def _child_logging(prefix: str):
    def setup(args, child_id, logging_pipe):
        # As Dramatiq does: everything the child prints goes through its pipe.
        sys.stdout = logging_pipe
        sys.stderr = logging_pipe
        configure_logging(stream=logging_pipe, service="worker")
        return get_logger("dramatiq", f"{prefix}({child_id})")

    return setup


def main() -> int:
    configure_logging(service="worker")
    # Dramatiq's CLI looks these up at call time; with the default fork start method
    # the children inherit the replacements.
    dramatiq_cli.setup_parent_logging = _parent_logging
    dramatiq_cli.setup_worker_logging = _child_logging("WorkerProcess")
    dramatiq_cli.setup_fork_logging = _child_logging("ForkProcess")
    settings = get_settings()
    path = None
    if settings.metrics_port:
        path = prepare_metrics_dir()
    try:
        return dramatiq_cli.main()
    finally:
        if path and not settings.metrics_dir:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
