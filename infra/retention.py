"""Retention: published outbox rows and remembered request ids are deleted after a window.

A remembered request id (``processed_requests``) is what makes a resend harmless, so its
window is longer than any window in which a message can come back: the dead-letter
retention in RabbitMQ (``BALLAST_DEAD_LETTER_TTL_MS``) is checked against it in the
settings.  Fired hourly by the scheduler (``prune_retention``), and by ``ballast outbox
prune``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine, func, select

from infra import outbox
from infra.db.engine import delete_in_batches
from infra.db.tables import processed_requests
from infra.logs import get_logger
from infra.settings import Settings

log = get_logger(__name__)

DAY_S = 86_400  # s
_AGE = re.compile(r"(\d+)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": DAY_S}


def parse_age(value: str) -> int | None:
    """``90m``, ``2h``, ``30d`` in seconds; None when ``value`` is not an age."""
    m = _AGE.fullmatch(value.strip())
    return int(m.group(1)) * _UNIT_S[m.group(2)] if m else None


@dataclass(frozen=True)
class Pruned:
    outbox: int
    requests: int


def windows(settings: Settings) -> tuple[int, int]:
    """(outbox, processed requests) windows in seconds."""
    return settings.retention_outbox_days * DAY_S, settings.retention_requests_days * DAY_S


#: One batch of remembered request ids older than ``:age`` seconds (rows another
#: transaction holds are left for the next run).
PRUNE_REQUESTS_BATCH = (
    "DELETE FROM processed_requests WHERE ctid IN (SELECT ctid FROM processed_requests "
    "WHERE created_at < now() - make_interval(secs => :age) "
    "LIMIT :batch FOR UPDATE SKIP LOCKED)")


def prune_requests(engine: Engine, older_than_s: float, *, batch: int = 10_000) -> int:
    deleted = delete_in_batches(engine, PRUNE_REQUESTS_BATCH, {"age": older_than_s}, batch)
    if deleted:
        log.info("processed_requests.pruned", rows=deleted, older_than_s=older_than_s)
    return deleted


def prunable_requests(conn: Connection, older_than_s: float) -> int:
    return conn.execute(
        select(func.count()).select_from(processed_requests)
        .where(processed_requests.c.created_at < func.now() - timedelta(seconds=older_than_s))
    ).scalar_one()


def run(engine: Engine, settings: Settings, outbox_older_than_s: float | None = None) -> Pruned:
    """Prune both, each after its window (the outbox's may be given)."""
    out_s, req_s = windows(settings)
    return Pruned(outbox.prune(engine, out_s if outbox_older_than_s is None else outbox_older_than_s),
                  prune_requests(engine, req_s))
