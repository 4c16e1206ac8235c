"""What operators see: the documents behind ``ballast buffers|providers|conversions``.

Buffers, provider health and active jobs are read from the SQL views of migration
0007 (``v_buffer_status``, ``v_provider_health``, ``v_active_conversion_jobs``), so an
operator with only ``psql`` sees the same rows as the CLI.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from infra.treasury import store
from infra.treasury.overrides import audit_log

BUFFER_KEYS = ("account_type", "currency", "balance", "min", "target", "max", "status")
PROVIDER_KEYS = ("name", "status", "priority", "success_rate", "daily_volume_used", "healthy",
                 "probe", "probed_at")
JOB_KEYS = ("job_id", "direction", "source_amount", "destination_amount", "status", "provider",
            "attempts", "created_at")


def _doc(row, keys) -> dict[str, Any]:
    m = row._mapping
    return {k: (m[k].isoformat() if hasattr(m[k], "isoformat") else m[k]) for k in keys}


def buffers(conn: Connection) -> list[dict[str, Any]]:
    return [_doc(r, BUFFER_KEYS) for r in conn.execute(text(
        f"SELECT {', '.join(BUFFER_KEYS)} FROM v_buffer_status ORDER BY account_type"))]


def providers(conn: Connection, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """Every provider by priority (or one page of them: ``limit`` rows from ``offset``)."""
    return [_doc(r, PROVIDER_KEYS) for r in conn.execute(text(
        f"SELECT {', '.join(PROVIDER_KEYS)} FROM v_provider_health ORDER BY priority, name "
        "LIMIT :limit OFFSET :offset"), {"limit": limit, "offset": offset})]


def provider(conn: Connection, name: str) -> dict[str, Any]:
    """One provider in full (``providers add|pause|resume|set``)."""
    p = store.get_provider(conn, name)
    health = conn.execute(text(f"SELECT {', '.join(PROVIDER_KEYS)} FROM v_provider_health "
                               "WHERE name = :n"), {"n": name}).one()
    extra = conn.execute(text("SELECT probe_error, callback_secret IS NOT NULL AS callbacks "
                              "FROM conversion_providers WHERE name = :n"), {"n": name}).one()
    return {**_doc(health, PROVIDER_KEYS), "type": p.kind, "directions": list(p.directions),
            "min_amount": p.min_amount, "max_amount": p.max_amount, "daily_limit": p.daily_limit,
            "config": p.config, "success_count": p.success_count,
            "failure_count": p.failure_count, "probe_error": extra.probe_error,
            "callbacks": extra.callbacks}


def job_row(j: store.Job) -> dict[str, Any]:
    return {"job_id": j.id, "direction": j.direction, "source_amount": j.source_amount,
            "destination_amount": j.destination_amount, "status": j.status,
            "provider": j.provider, "attempts": j.attempts, "created_at": j.created_at.isoformat()}


def conversions(conn: Connection, active_only: bool = False, limit: int = 200,
                offset: int = 0) -> list[dict[str, Any]]:
    if active_only:
        return [_doc(r, JOB_KEYS) for r in conn.execute(text(
            f"SELECT {', '.join(JOB_KEYS)} FROM v_active_conversion_jobs ORDER BY job_id DESC "
            "LIMIT :lim OFFSET :off"), {"lim": limit, "off": offset})]
    return [job_row(j) for j in store.list_jobs(conn, active_only=False, limit=limit,
                                                offset=offset)]


def job(conn: Connection, job_id: int) -> dict[str, Any]:
    """One job in full, with its attempts (quotes and why each provider was chosen), every
    transition, and any operator override."""
    j = store.get_job(conn, job_id)
    return {**job_row(j), "kind": j.kind, "source_account": j.source_account,
            "destination_account": j.destination_account, "fee_amount": j.fee_amount,
            "requested_by": j.requested_by, "trigger": j.trigger,
            "failure_reason": j.failure_reason,
            "stale_at": j.stale_at.isoformat() if j.stale_at else None,
            "attempt_log": [{"attempt": a.attempt_no, "provider": a.provider,
                             "idempotency_key": a.idempotency_key, "status": a.status,
                             "error": a.error, "decision": a.decision, "quotes": a.quotes}
                            for a in store.attempts_of(conn, job_id)],
            "transitions": store.transitions(conn, job_id),
            "overrides": audit_log(conn, job_id)}
