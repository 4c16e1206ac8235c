"""Tables of the treasury engine: buffers, settings, providers, jobs, attempts.

Plain functions on the unit of work's connection; nothing here commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert

from domain import accounts
from domain import conversions as conv
from domain.buffers import Thresholds, account_code, status as buffer_status
from domain.errors import NotFound, Refused
from domain.providers import HEALTH_WINDOW, PROBE_FRESH, ProviderView
from infra.db.tables import (accounts as accounts_table, conversion_attempts,
                             conversion_job_transitions, conversion_jobs, conversion_providers,
                             treasury_buffers, treasury_overrides, treasury_settings)
from infra.settings import get_settings

_b, _s, _p = treasury_buffers.c, treasury_settings.c, conversion_providers.c
_j, _t, _at = conversion_jobs.c, conversion_job_transitions.c, conversion_attempts.c


# --- buffers and settings ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Buffer:
    account_type: str
    currency: str
    thresholds: Thresholds
    balance: int

    @property
    def account(self) -> str:
        return account_code(self.account_type)

    @property
    def status(self) -> str:
        return buffer_status(self.balance, self.thresholds)


def load_buffers(conn: Connection, *, lock: bool = False,
                 only: str | None = None) -> dict[str, Buffer]:
    """Every buffer (or ``only`` one) with its balance; ``lock`` takes the buffer
    rows in account-type order, which serialises cycles and submissions."""
    a = accounts_table.c
    stmt = (select(treasury_buffers, func.coalesce(a.balance, 0).label("balance"))
            .select_from(treasury_buffers.outerjoin(
                accounts_table, a.code == literal(accounts.prefix(accounts.BUFFER)) + _b.account_type))
            .order_by(_b.account_type))
    if only is not None:
        stmt = stmt.where(_b.account_type == only)
    if lock:
        stmt = stmt.with_for_update(of=treasury_buffers)
    rows = conn.execute(stmt)
    return {
        r.account_type: Buffer(r.account_type, r.currency,
                               Thresholds(r.min_amount, r.target_amount, r.max_amount,
                                          r.batch_amount), int(r.balance))
        for r in rows
    }


def set_thresholds(conn: Connection, account_type: str, t: Thresholds, by: str) -> None:
    done = conn.execute(
        update(treasury_buffers).where(_b.account_type == account_type)
        .values(min_amount=t.min, target_amount=t.target, max_amount=t.max, batch_amount=t.batch,
                updated_at=func.now(), updated_by=by)).rowcount
    if not done:
        raise NotFound(f"no buffer {account_type!r}")


def get_setting(conn: Connection, key: str, default: Any) -> Any:
    value = conn.execute(select(_s.value).where(_s.key == key)).scalar_one_or_none()
    return default if value is None else value


def put_setting(conn: Connection, key: str, value: Any, by: str) -> None:
    new = insert(treasury_settings).values(key=key, value=value, updated_by=by)
    conn.execute(new.on_conflict_do_update(index_elements=[_s.key], set_={
        "value": new.excluded.value, "updated_by": new.excluded.updated_by,
        "updated_at": func.now()}))


#: The setting that freezes every conversion (``services.overrides.freeze_conversions``).
FROZEN = "conversions_frozen"


def freeze_state(conn: Connection, *, lock: bool = False) -> dict[str, Any] | None:
    """The freeze in force (``{"frozen", "by", "reason", "at"}``), or None.

    ``lock`` holds the setting's row shared until commit: a freeze (which updates it)
    waits for such a transaction, and no such transaction starts after a freeze."""
    if lock:
        conn.execute(select(_s.key).where(_s.key == FROZEN).with_for_update(read=True))
    state = get_setting(conn, FROZEN, {"frozen": False})
    return state if isinstance(state, dict) and state.get("frozen") else None


def record_override(conn: Connection, action: str, by: str, *, job_id: int | None = None,
                    reason: str | None = None, evidence: str | None = None,
                    data: dict[str, Any] | None = None) -> int:
    """One row of the levers' audit (``treasury_overrides``): who, what, why, evidence."""
    return conn.execute(
        insert(treasury_overrides).values(
            action=action, job_id=job_id, performed_by=by, reason=reason, evidence=evidence,
            data=json.loads(json.dumps(data or {}, default=str)))  # dates as their text
        .returning(treasury_overrides.c.id)).scalar_one()


# --- providers ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProviderRow:
    name: str
    kind: str
    priority: int
    status: str
    directions: tuple[str, ...]
    min_amount: int
    max_amount: int | None
    daily_limit: int | None
    config: dict[str, Any]
    success_count: int
    failure_count: int
    successes: int = 0  # in the health window
    failures: int = 0
    daily_volume_used: int = 0
    probe_healthy: bool | None = None  # the latest probe, if fresh (PROBE_FRESH)

    def view(self) -> ProviderView:
        return ProviderView(self.name, self.priority, self.status, frozenset(self.directions),
                            self.min_amount, self.max_amount, self.daily_limit,
                            self.daily_volume_used, self.successes, self.failures,
                            self.probe_healthy)


def day_start(now: datetime | None = None) -> datetime:
    """Midnight of today in BALLAST_TIMEZONE: daily volumes reset there."""
    zone = ZoneInfo(get_settings().timezone)
    local = (now or datetime.now(zone)).astimezone(zone)
    return datetime.combine(local.date(), dtime(0), zone)


_PROVIDERS = """
    SELECT p.*, COALESCE(w.successes, 0) AS successes, COALESCE(w.failures, 0) AS failures,
           COALESCE(v.used, 0) AS daily_volume_used,
           CASE WHEN p.probed_at >= now() - CAST(:probe_fresh AS interval) THEN p.probe_healthy END
               AS probe_ok
    FROM conversion_providers p
    LEFT JOIN (
        SELECT provider,
               count(*) FILTER (WHERE status = 'completed') AS successes,
               count(*) FILTER (WHERE status IN ('rejected', 'error', 'failed')) AS failures
        FROM conversion_attempts
        WHERE outcome_at >= now() - CAST(:health_window AS interval) GROUP BY provider
    ) w ON w.provider = p.name
    LEFT JOIN (
        SELECT provider, sum(par_amount) AS used FROM conversion_attempts
        WHERE status IN ('submitting', 'accepted', 'completed') AND created_at >= :day
        GROUP BY provider
    ) v ON v.provider = p.name
"""


#: The domain's windows, bound as parameters of ``_PROVIDERS`` (never written into its text).
_WINDOWS = {"probe_fresh": PROBE_FRESH, "health_window": HEALTH_WINDOW}


def load_providers(conn: Connection, *, lock: bool = False) -> list[ProviderRow]:
    """Every provider with its health-window outcomes and today's volume.

    ``lock`` holds every provider row until commit, so two submissions never
    both spend the same remaining daily volume.
    """
    if lock:
        conn.execute(select(_p.name).order_by(_p.name).with_for_update())
    rows = conn.execute(text(_PROVIDERS + " ORDER BY p.priority, p.name"), {"day": day_start(), **_WINDOWS})
    return [_provider(r) for r in rows]


def get_provider(conn: Connection, name: str) -> ProviderRow:
    row = conn.execute(text(_PROVIDERS + " WHERE p.name = :n"),
                       {"day": day_start(), "n": name, **_WINDOWS}).one_or_none()
    if row is None:
        raise NotFound(f"no provider {name!r}")
    return _provider(row)


def _provider(r) -> ProviderRow:
    return ProviderRow(r.name, r.kind, r.priority, r.status, tuple(r.directions), int(r.min_amount),
                       None if r.max_amount is None else int(r.max_amount),
                       None if r.daily_limit is None else int(r.daily_limit), dict(r.config),
                       int(r.success_count), int(r.failure_count), int(r.successes),
                       int(r.failures), int(r.daily_volume_used), r.probe_ok)


def add_provider(conn: Connection, row: ProviderRow) -> None:
    inserted = conn.execute(
        insert(conversion_providers).values(
            name=row.name, kind=row.kind, priority=row.priority, status=row.status,
            directions=list(row.directions), min_amount=row.min_amount, max_amount=row.max_amount,
            daily_limit=row.daily_limit, config=row.config)
        .on_conflict_do_nothing(index_elements=[_p.name]).returning(_p.name)).scalar_one_or_none()
    if inserted is None:
        raise Refused(f"provider {row.name!r} exists already")


def update_provider(conn: Connection, name: str, **fields: Any) -> None:
    """Change some of a provider's columns (``config`` replaces the whole document)."""
    allowed = {"priority", "status", "directions", "min_amount", "max_amount", "daily_limit",
               "config"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    values = {k: list(v) if k == "directions" else v for k, v in fields.items()}
    done = conn.execute(update(conversion_providers).where(_p.name == name)
                        .values(**values, updated_at=func.now())).rowcount
    if not done:
        raise NotFound(f"no provider {name!r}")


def set_callback_secret(conn: Connection, name: str, secret: str) -> None:
    done = conn.execute(update(conversion_providers).where(_p.name == name)
                        .values(callback_secret=secret, updated_at=func.now())).rowcount
    if not done:
        raise NotFound(f"no provider {name!r}")


def callback_secret(conn: Connection, name: str) -> str | None:
    return conn.execute(select(_p.callback_secret).where(_p.name == name)).scalar_one_or_none()


def record_probe(conn: Connection, name: str, healthy: bool, error: str | None) -> None:
    """The result of a health probe of ``name`` (fed to selection while fresh)."""
    conn.execute(update(conversion_providers).where(_p.name == name)
                 .values(probe_healthy=healthy, probed_at=func.now(), probe_error=error))


def count_outcome(conn: Connection, provider: str, success: bool) -> None:
    counter = _p.success_count if success else _p.failure_count
    conn.execute(update(conversion_providers).where(_p.name == provider)
                 .values({counter: counter + 1, _p.updated_at: func.now()}))


# --- jobs and attempts -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    direction: str
    source_account: str
    destination_account: str
    source_currency: str
    destination_currency: str
    source_amount: int
    destination_amount: int | None
    fee_amount: int | None
    status: str
    provider: str | None
    attempts: int
    transit_moved: bool
    requested_by: str
    trigger: str
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    stale_at: datetime | None

    @property
    def destination_type(self) -> str:
        return self.destination_account.removeprefix("buffer:")

    @property
    def source_type(self) -> str:
        return self.source_account.removeprefix("buffer:")


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    job_id: int
    attempt_no: int
    provider: str
    idempotency_key: str
    par_amount: int
    status: str
    provider_ref: str | None
    error: str | None
    created_at: datetime
    answered_at: datetime | None = field(default=None)
    quotes: list[dict[str, Any]] | None = field(default=None)
    decision: str | None = field(default=None)


_JOB_COLUMNS = [_j[f] for f in Job.__dataclass_fields__]


def insert_job(conn: Connection, *, kind: str, direction: str, source_type: str,
               destination_type: str, amount: int, requested_by: str, trigger: str) -> int:
    src, dst = conv.DIRECTIONS[direction]
    job_id = conn.execute(
        insert(conversion_jobs).values(
            kind=kind, direction=direction, source_account=account_code(source_type),
            destination_account=account_code(destination_type), source_currency=src,
            destination_currency=dst, source_amount=amount, requested_by=requested_by,
            trigger=trigger).returning(_j.id)).scalar_one()
    record_transition(conn, job_id, None, conv.PENDING, f"{kind} by {requested_by} ({trigger})")
    return job_id


def get_job(conn: Connection, job_id: int, *, lock: bool = False) -> Job:
    stmt = select(*_JOB_COLUMNS).where(_j.id == job_id)
    row = conn.execute(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise NotFound(f"no conversion job {job_id}")
    return Job(**row._mapping)


def list_jobs(conn: Connection, *, active_only: bool = False, limit: int = 200,
              statuses: tuple[str, ...] | None = None, offset: int = 0) -> list[Job]:
    wanted = statuses or (conv.ACTIVE if active_only else None)
    stmt = select(*_JOB_COLUMNS).order_by(_j.id.desc()).limit(limit).offset(offset)
    if wanted:
        stmt = stmt.where(_j.status.in_(list(wanted)))
    rows = conn.execute(stmt)
    return [Job(**r._mapping) for r in rows]


def reserved_by_pending(conn: Connection, *, before_job: int | None = None) -> dict[str, int]:
    """What pending jobs will still take from each source buffer, by account type.

    Only jobs whose source amount has not moved to transit yet: a job in
    transit has left the balance already.  ``before_job`` counts only jobs
    created before it (older jobs go first at submission).
    """
    stmt = (select(_j.source_account, func.sum(_j.source_amount).label("held"))
            .where(_j.status == conv.PENDING, _j.transit_moved.is_(False))
            .group_by(_j.source_account))
    if before_job is not None:
        stmt = stmt.where(_j.id < before_job)
    rows = conn.execute(stmt)
    return {r.source_account.removeprefix("buffer:"): int(r.held) for r in rows}


def lock_buffer(conn: Connection, account_type: str) -> Buffer:
    """One buffer, its row locked: the source's lock, taken by cycles (all buffers)
    and by every submission and manual conversion drawing on it."""
    return load_buffers(conn, lock=True, only=account_type)[account_type]


def move_job(conn: Connection, job: Job, new: str, note: str | None = None,
             **columns: Any) -> Job:
    """Move ``job`` along the state machine, recording the transition and its time."""
    conv.transition(job.status, new)
    conn.execute(update(conversion_jobs).where(_j.id == job.id)
                 .values(status=new, updated_at=func.now(), **columns))
    record_transition(conn, job.id, job.status, new, note)
    return replace(job, status=new, **columns)


def update_job(conn: Connection, job: Job, **columns: Any) -> Job:
    """Change columns other than the status."""
    conn.execute(update(conversion_jobs).where(_j.id == job.id)
                 .values(**columns, updated_at=func.now()))
    return replace(job, **columns)


def record_transition(conn: Connection, job_id: int, old: str | None, new: str,
                      note: str | None) -> None:
    conn.execute(insert(conversion_job_transitions).values(
        job_id=job_id, from_status=old, to_status=new, note=note))


def transitions(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    return [
        {"from": r.from_status, "to": r.to_status, "note": r.note, "at": r.at.isoformat()}
        for r in conn.execute(select(conversion_job_transitions).where(_t.job_id == job_id)
                              .order_by(_t.id))
    ]


_ATTEMPT_COLUMNS = [_at[f] for f in Attempt.__dataclass_fields__]


def attempts_of(conn: Connection, job_id: int) -> list[Attempt]:
    return [Attempt(**r._mapping) for r in conn.execute(
        select(*_ATTEMPT_COLUMNS).where(_at.job_id == job_id).order_by(_at.attempt_no))]


def insert_attempt(conn: Connection, job: Job, provider: str, key: str, par_amount: int, *,
                   quotes: list[dict[str, Any]] | None = None,
                   decision: str | None = None) -> Attempt:
    """A submission attempt, with the quotes selection saw and why it chose ``provider``."""
    row = conn.execute(
        insert(conversion_attempts).values(
            job_id=job.id, attempt_no=job.attempts + 1, provider=provider, idempotency_key=key,
            par_amount=par_amount, decision=decision,
            **({} if quotes is None else {"quotes": quotes}))  # none: SQL NULL, not JSON null
        .returning(*_ATTEMPT_COLUMNS)).one()
    return Attempt(**row._mapping)


def finish_attempt(conn: Connection, attempt: Attempt, status: str, *, error: str | None = None,
                   provider_ref: str | None = None) -> None:
    """Record the provider's answer (``accepted``) or the attempt's outcome."""
    outcome = status != "accepted"
    values: dict[str, Any] = {"status": status,
                              "answered_at": func.coalesce(_at.answered_at, func.now())}
    if error is not None:
        values["error"] = error
    if provider_ref is not None:
        values["provider_ref"] = provider_ref
    if outcome:
        values["outcome_at"] = func.now()
    conn.execute(update(conversion_attempts).where(_at.id == attempt.id).values(**values))
