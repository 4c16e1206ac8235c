"""The scheduler's keys in Redis: its lease, each slot's claim, each schedule's last fired slot.

Read by the scheduler (``schedules.runner``) and by what reports on it: the schedules'
alert condition, the exporter's gauges and the console's scheduler page.
"""

from __future__ import annotations

from typing import Iterable

import redis

from schedules.table import Schedule

PREFIX = "ballast:scheduler:"


def last_key(name: str) -> str:
    """The key holding the slot (Unix time) schedule ``name`` last fired, by any scheduler."""
    return PREFIX + f"last:{name}"


def last_fired(client: redis.Redis, schedules: Iterable[Schedule]) -> dict[str, int | None]:
    """``{schedule: last fired slot}`` in one MGET; None for one that never fired.  Redis
    errors are the caller's to handle."""
    names = [s.name for s in schedules]
    values = client.mget([last_key(n) for n in names])
    return {n: int(v) if v is not None else None for n, v in zip(names, values)}
