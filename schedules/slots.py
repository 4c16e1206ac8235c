"""Which slot is due: pure time arithmetic, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from domain import request_ids
from schedules.table import Schedule


def latest_slot(schedule: Schedule, now: datetime, tz: ZoneInfo) -> datetime:
    """The most recent slot of ``schedule`` at or before ``now`` (aware), in ``tz``.

    Interval slots are aligned to the epoch, so every scheduler computes the
    same slots; a daily slot is today's ``daily_at`` in ``tz`` once it has
    passed, else yesterday's.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if schedule.every_s:
        epoch = int(now.timestamp())
        return datetime.fromtimestamp(epoch - epoch % schedule.every_s, tz=timezone.utc).astimezone(tz)
    assert schedule.daily_at is not None
    local = now.astimezone(tz)
    today = datetime.combine(local.date(), schedule.daily_at, tzinfo=tz)
    return today if local >= today else today - timedelta(days=1)


def request_id(schedule: Schedule, slot: datetime) -> str:
    """Deterministic per schedule and slot, so a duplicate firing is harmless."""
    return request_ids.next_step("schedule", schedule.name, int(slot.timestamp()))
