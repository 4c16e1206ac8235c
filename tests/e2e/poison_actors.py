"""Test-only actors for the poison-message proofs (``Worker(modules=[...])``).

``kill_my_thread`` kills the worker thread that runs it, the way a malformed
``options`` used to before envelopes were checked: it swaps its own message's
options for a list and raises, so Dramatiq's error handling itself fails and the
thread dies.  The envelope check cannot see this coming; the thread watch must
replace the thread.  ``budgeted_transient`` fails transiently for ever, with a
short ``retry_within_ms`` budget, like a periodic step in an outage.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from infra.broker import get_broker
from tests.e2e.flaky_actors import attempt, database_gone

QUEUE = "ballast.test.poison"


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def kill_my_thread(key: str) -> None:
    attempt(key)
    message = CurrentMessage.get_current_message()
    object.__setattr__(message._message, "options", [])
    raise RuntimeError("this thread is about to die")


@dramatiq.actor(queue_name=QUEUE, broker=get_broker(), max_retries=50, retry_within_ms=1500)
def budgeted_transient(key: str) -> None:
    attempt(key)
    raise database_gone()


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def noted(key: str) -> None:
    attempt(key)


@dramatiq.actor(queue_name=QUEUE, broker=get_broker())
def crash_the_worker(key: str) -> None:
    """SIGKILLs the whole worker on every delivery: only a delivery limit stops it."""
    import os
    import signal

    attempt(key)
    os.killpg(os.getpgid(0), signal.SIGKILL)
