"""The alert condition of the schedules: one that stopped firing is an open alert.

Each schedule's last fired slot is in Redis (``schedules.keys``).  A schedule whose last
slot is older than two of its periods (plus two minutes) raises ``schedule_not_firing``
(warning) naming it; it resolves once the schedule fires again.  A schedule that never
fired (a fresh install) is not judged.  This condition runs in the alert sweep, which the
scheduler itself fires: a dead scheduler silences it too, hence the heartbeat and
``BallastScheduleNotFiring`` rules in deploy/prometheus/rules.yml.
"""

from __future__ import annotations

import time

import redis

from infra import alerts
from infra.settings import get_settings
from schedules import keys
from schedules.table import SCHEDULES

GRACE_S = 120  # s beyond two periods


def late(last_fired: dict[str, int | None], now: float) -> dict[str, float]:
    """``{schedule: seconds since its last slot}`` of the schedules that stopped firing."""
    out = {}
    for s in SCHEDULES:
        at = last_fired.get(s.name)
        period = s.every_s or 86_400
        if at is not None and now - at > 2 * period + GRACE_S:
            out[s.name] = now - at
    return out


def schedules_firing(uow) -> None:
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
    try:
        last = keys.last_fired(client, SCHEDULES)
    finally:
        client.close()
    alerts.reconcile(uow, "schedule_not_firing:", [
        alerts.Alert("schedule_not_firing", "warning",
                     f"schedule {name} has not fired for {int(age // 60)} min",
                     f"schedule_not_firing:{name}",
                     {"schedule": name, "last_fired": last[name], "age_s": int(age)})
        for name, age in sorted(late(last, time.time()).items())])
