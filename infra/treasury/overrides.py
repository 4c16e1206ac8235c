"""The levers' audit (``treasury_overrides``): who pulled which lever, when, why.

The levers themselves are handlers: ``services/overrides.py`` (freeze, thaw, convert,
cancel, complete or fail by hand), ``services/buffers.py`` and ``services/providers.py``
(rebalancing, thresholds, providers).  While frozen no job is created and nothing is
submitted to a provider; jobs a provider already holds keep being polled.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from domain.errors import InvalidCommand
from infra.db.tables import treasury_overrides
from infra.treasury import store

FROZEN = store.FROZEN
#: The freeze in force (a dict: by, reason, at), or None.
frozen = store.freeze_state


def _who(by: str) -> str:
    if not by or not by.strip():
        raise InvalidCommand("--by NAME is required: who pulls the lever")
    return by.strip()


def record_lever(conn: Connection, action: str, by: str, *, reason: str | None = None,
                 data: dict[str, Any] | None = None) -> int:
    """Audit a lever in ``conn``'s transaction (the CLI's rebalance, with its cycle)."""
    return store.record_override(conn, action, _who(by), reason=reason, data=data)


def audit_log(conn: Connection, job_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The levers pulled (on ``job_id``, or all), newest first."""
    o = treasury_overrides.c
    stmt = select(treasury_overrides).order_by(o.id.desc()).limit(limit)
    rows = conn.execute(stmt if job_id is None else stmt.where(o.job_id == job_id))
    return [{"action": r.action, "job_id": r.job_id, "by": r.performed_by, "reason": r.reason,
             "evidence": r.evidence, "data": r.data, "at": r.at.isoformat()} for r in rows]
