"""Every actor of Ballast, registered on the broker when this package is imported.

This is the worker's entry point (``dramatiq actors``): it sets the broker up
from the environment, then imports one module per step.
"""

from infra.broker import get_broker
from infra.logs import configure_logging

configure_logging()
broker = get_broker()

from actors import (  # noqa: E402,F401
    alerts,
    challenges,
    journal,
    markets,
    operations,
    treasury,
    wallets,
)
