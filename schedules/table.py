"""The periodic firings of SPEC §7: what fires, how often, with which kwargs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Callable


@dataclass(frozen=True)
class Schedule:
    """One periodic firing.

    Parameters:
      name: stable name; part of every firing's request id.
      actor: the actor (CONTRACT.md) the message is for.
      every_s: fire at every multiple of this many seconds since the epoch, or
      daily_at: fire once a day at this local time (BALLAST_TIMEZONE).
      kwargs: extra kwargs for a slot (given the slot's local datetime).
    """

    name: str
    actor: str
    every_s: int | None = None  # s
    daily_at: time | None = None
    kwargs: Callable[[datetime], dict[str, Any]] = field(default=lambda slot: {})


def _previous_day(slot: datetime) -> dict[str, Any]:
    return {"day": (slot.date() - timedelta(days=1)).isoformat()}


SCHEDULES: list[Schedule] = [
    Schedule("settlement_cycle", "run_settlement_cycle", every_s=300,
             kwargs=lambda slot: {"trigger": "scheduled"}),
    Schedule("conversion_polling", "poll_conversion", every_s=60),
    Schedule("provider_probes", "probe_providers", every_s=60),
    Schedule("payment_matching", "match_payments", every_s=300),
    Schedule("alert_sweep", "evaluate_alerts", every_s=60),
    Schedule("outbox_sweep", "sweep_outbox", every_s=10),
    Schedule("retention", "prune_retention", every_s=3600),
    Schedule("daily_summary", "send_daily_summary", daily_at=time(0, 5), kwargs=_previous_day),
]
