"""A no-op Dramatiq actor: the yardstick for "messages per second through a real worker".

Loaded into a worker next to Ballast's actors (``python -m dramatiq actors bench.noop``).
Its only work is one Redis INCR so the benchmark can count what went through.
"""

from __future__ import annotations

import dramatiq
import redis

from infra.broker import get_broker
from infra.settings import get_settings

QUEUE = "bench.noop"
ACTOR = "bench_noop"

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(get_settings().redis_url)
    return _client


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0, broker=get_broker())
def noop(counter: str) -> None:
    """Count one message under the Redis key ``counter``; nothing else."""
    _redis().incr(counter)
