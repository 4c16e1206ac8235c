"""What operators see: the documents behind ``ballast buffers|providers|conversions``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from infra.treasury import store


def buffers(conn: Connection) -> list[dict[str, Any]]:
    return [
        {"account_type": buf.account_type, "currency": buf.currency, "balance": buf.balance,
         "min": buf.thresholds.min, "target": buf.thresholds.target, "max": buf.thresholds.max,
         "status": buf.status}
        for buf in store.load_buffers(conn).values()
    ]


def provider_row(p: store.ProviderRow) -> dict[str, Any]:
    total = p.successes + p.failures
    return {"name": p.name, "status": p.status, "priority": p.priority,
            "success_rate": round(p.successes / total, 4) if total else None,
            "daily_volume_used": p.daily_volume_used, "healthy": p.view().healthy}


def providers(conn: Connection) -> list[dict[str, Any]]:
    return [provider_row(p) for p in store.load_providers(conn)]


def provider(conn: Connection, name: str) -> dict[str, Any]:
    """One provider in full (``providers add|pause|resume|set``)."""
    p = store.get_provider(conn, name)
    return {**provider_row(p), "type": p.kind, "directions": list(p.directions),
            "min_amount": p.min_amount, "max_amount": p.max_amount, "daily_limit": p.daily_limit,
            "config": p.config, "success_count": p.success_count,
            "failure_count": p.failure_count}


def job_row(j: store.Job) -> dict[str, Any]:
    return {"job_id": j.id, "direction": j.direction, "source_amount": j.source_amount,
            "destination_amount": j.destination_amount, "status": j.status,
            "provider": j.provider, "attempts": j.attempts, "created_at": j.created_at.isoformat()}


def conversions(conn: Connection, active_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    return [job_row(j) for j in store.list_jobs(conn, active_only=active_only, limit=limit)]


def job(conn: Connection, job_id: int) -> dict[str, Any]:
    """One job in full, with its attempts and every transition."""
    j = store.get_job(conn, job_id)
    return {**job_row(j), "kind": j.kind, "source_account": j.source_account,
            "destination_account": j.destination_account, "fee_amount": j.fee_amount,
            "requested_by": j.requested_by, "trigger": j.trigger,
            "failure_reason": j.failure_reason,
            "stale_at": j.stale_at.isoformat() if j.stale_at else None,
            "attempt_log": [{"attempt": a.attempt_no, "provider": a.provider,
                             "idempotency_key": a.idempotency_key, "status": a.status,
                             "error": a.error} for a in store.attempts_of(conn, job_id)],
            "transitions": store.transitions(conn, job_id)}
