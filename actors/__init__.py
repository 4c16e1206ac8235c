"""Every actor of Ballast, registered on the broker when this package is imported.

This is the worker's entry point (``dramatiq actors``): it sets the broker up
from the environment, then imports one module per step.
"""

import dramatiq

from infra.broker import build_broker
from infra.logs import ensure_logging

# The worker's processes set their logging up first (infra.worker); a CLI that loads the
# actors to run a command in-process (infra.cli.in_process) keeps its own (WARNING).
ensure_logging()
if dramatiq.broker.global_broker is None:
    # The worker's broker: with Prometheus metrics when BALLAST_METRICS_PORT is set.
    dramatiq.set_broker(build_broker(worker=True))
broker = dramatiq.get_broker()

from actors import (  # noqa: E402,F401
    alerts,
    challenges,
    journal,
    markets,
    operations,
    treasury,
    wallets,
)
