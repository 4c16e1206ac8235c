"""Tables of the treasury engine: buffers, settings, providers, jobs, attempts.

Plain functions on the unit of work's connection; nothing here commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text

from domain import accounts
from domain import conversions as conv
from domain.buffers import Thresholds, account_code, status as buffer_status
from domain.errors import NotFound, Refused
from domain.providers import HEALTH_WINDOW, PROBE_FRESH, ProviderView
from infra.settings import get_settings



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
    rows = conn.execute(text(
        "SELECT b.*, COALESCE(a.balance, 0) AS balance FROM treasury_buffers b "
        "LEFT JOIN accounts a ON a.code = CAST(:buffer_prefix AS text) || b.account_type "
        "WHERE CAST(:only AS text) IS NULL OR b.account_type = CAST(:only AS text) "
        "ORDER BY b.account_type"
        + (" FOR UPDATE OF b" if lock else "")
    ), {"only": only, "buffer_prefix": accounts.prefix(accounts.BUFFER)})
    return {
        r.account_type: Buffer(r.account_type, r.currency,
                               Thresholds(r.min_amount, r.target_amount, r.max_amount,
                                          r.batch_amount), int(r.balance))
        for r in rows
    }


def set_thresholds(conn: Connection, account_type: str, t: Thresholds, by: str) -> None:
    done = conn.execute(
        text("UPDATE treasury_buffers SET min_amount = :mn, target_amount = :tg, max_amount = :mx, "
             "batch_amount = :b, updated_at = now(), updated_by = :by WHERE account_type = :a"),
        {"mn": t.min, "tg": t.target, "mx": t.max, "b": t.batch, "by": by, "a": account_type},
    ).rowcount
    if not done:
        raise NotFound(f"no buffer {account_type!r}")


def get_setting(conn: Connection, key: str, default: Any) -> Any:
    value = conn.execute(text("SELECT value FROM treasury_settings WHERE key = :k"),
                         {"k": key}).scalar_one_or_none()
    return default if value is None else value


def put_setting(conn: Connection, key: str, value: Any, by: str) -> None:
    conn.execute(
        text("INSERT INTO treasury_settings (key, value, updated_by) VALUES (:k, CAST(:v AS jsonb), :by) "
             "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by, "
             "updated_at = now()"),
        {"k": key, "v": json.dumps(value), "by": by},
    )


#: The setting that freezes every conversion (``overrides.freeze``).
FROZEN = "conversions_frozen"


def freeze_state(conn: Connection, *, lock: bool = False) -> dict[str, Any] | None:
    """The freeze in force (``{"frozen", "by", "reason", "at"}``), or None.

    ``lock`` holds the setting's row shared until commit: a freeze (which updates it)
    waits for such a transaction, and no such transaction starts after a freeze."""
    if lock:
        conn.execute(text("SELECT 1 FROM treasury_settings WHERE key = :k FOR SHARE"), {"k": FROZEN})
    state = get_setting(conn, FROZEN, {"frozen": False})
    return state if isinstance(state, dict) and state.get("frozen") else None


def record_override(conn: Connection, action: str, by: str, *, job_id: int | None = None,
                    reason: str | None = None, evidence: str | None = None,
                    data: dict[str, Any] | None = None) -> int:
    """One row of the levers' audit (``treasury_overrides``): who, what, why, evidence."""
    return conn.execute(
        text("INSERT INTO treasury_overrides (action, job_id, performed_by, reason, evidence, data) "
             "VALUES (:a, :j, :by, :r, :e, CAST(:d AS jsonb)) RETURNING id"),
        {"a": action, "j": job_id, "by": by, "r": reason, "e": evidence,
         "d": json.dumps(data or {}, default=str)},
    ).scalar_one()


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
        conn.execute(text("SELECT name FROM conversion_providers ORDER BY name FOR UPDATE"))
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
        text("INSERT INTO conversion_providers (name, kind, priority, status, directions, "
             "min_amount, max_amount, daily_limit, config) VALUES (:n, :k, :p, :s, :d, :mn, :mx, "
             ":dl, CAST(:c AS jsonb)) ON CONFLICT (name) DO NOTHING RETURNING name"),
        {"n": row.name, "k": row.kind, "p": row.priority, "s": row.status,
         "d": list(row.directions), "mn": row.min_amount, "mx": row.max_amount,
         "dl": row.daily_limit, "c": json.dumps(row.config)},
    ).scalar_one_or_none()
    if inserted is None:
        raise Refused(f"provider {row.name!r} exists already")


def update_provider(conn: Connection, name: str, **fields: Any) -> None:
    """Change some of a provider's columns (``config`` replaces the whole document)."""
    allowed = {"priority", "status", "directions", "min_amount", "max_amount", "daily_limit",
               "config"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    params = {k: (json.dumps(v) if k == "config" else list(v) if k == "directions" else v)
              for k, v in fields.items()}
    sets = ", ".join(f"{k} = CAST(:{k} AS jsonb)" if k == "config" else f"{k} = :{k}"
                     for k in fields)
    done = conn.execute(
        text(f"UPDATE conversion_providers SET {sets}, updated_at = now() WHERE name = :name"),
        {**params, "name": name},
    ).rowcount
    if not done:
        raise NotFound(f"no provider {name!r}")


def set_callback_secret(conn: Connection, name: str, secret: str) -> None:
    done = conn.execute(text("UPDATE conversion_providers SET callback_secret = :s, "
                             "updated_at = now() WHERE name = :n"), {"s": secret, "n": name}).rowcount
    if not done:
        raise NotFound(f"no provider {name!r}")


def callback_secret(conn: Connection, name: str) -> str | None:
    return conn.execute(text("SELECT callback_secret FROM conversion_providers WHERE name = :n"),
                        {"n": name}).scalar_one_or_none()


def record_probe(conn: Connection, name: str, healthy: bool, error: str | None) -> None:
    """The result of a health probe of ``name`` (fed to selection while fresh)."""
    conn.execute(text("UPDATE conversion_providers SET probe_healthy = :h, probed_at = now(), "
                      "probe_error = :e WHERE name = :n"),
                 {"h": healthy, "e": error, "n": name})


def count_outcome(conn: Connection, provider: str, success: bool) -> None:
    column = "success_count" if success else "failure_count"
    conn.execute(text(f"UPDATE conversion_providers SET {column} = {column} + 1, "
                      "updated_at = now() WHERE name = :n"), {"n": provider})


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


_JOB_COLUMNS = ", ".join(Job.__dataclass_fields__)


def insert_job(conn: Connection, *, kind: str, direction: str, source_type: str,
               destination_type: str, amount: int, requested_by: str, trigger: str) -> int:
    src, dst = conv.DIRECTIONS[direction]
    job_id = conn.execute(
        text("INSERT INTO conversion_jobs (kind, direction, source_account, destination_account, "
             "source_currency, destination_currency, source_amount, requested_by, trigger) "
             "VALUES (:k, :d, :sa, :da, :sc, :dc, :amt, :by, :t) RETURNING id"),
        {"k": kind, "d": direction, "sa": account_code(source_type),
         "da": account_code(destination_type), "sc": src, "dc": dst, "amt": amount,
         "by": requested_by, "t": trigger},
    ).scalar_one()
    record_transition(conn, job_id, None, conv.PENDING, f"{kind} by {requested_by} ({trigger})")
    return job_id


def get_job(conn: Connection, job_id: int, *, lock: bool = False) -> Job:
    row = conn.execute(
        text(f"SELECT {_JOB_COLUMNS} FROM conversion_jobs WHERE id = :id"
             + (" FOR UPDATE" if lock else "")),
        {"id": job_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"no conversion job {job_id}")
    return Job(**row._mapping)


def list_jobs(conn: Connection, *, active_only: bool = False, limit: int = 200,
              statuses: tuple[str, ...] | None = None, offset: int = 0) -> list[Job]:
    wanted = statuses or (conv.ACTIVE if active_only else None)
    rows = conn.execute(
        text(f"SELECT {_JOB_COLUMNS} FROM conversion_jobs "
             "WHERE (CAST(:st AS text[]) IS NULL OR status = ANY(CAST(:st AS text[]))) "
             "ORDER BY id DESC LIMIT :lim OFFSET :off"),
        {"st": list(wanted) if wanted else None, "lim": limit, "off": offset},
    )
    return [Job(**r._mapping) for r in rows]


def reserved_by_pending(conn: Connection, *, before_job: int | None = None) -> dict[str, int]:
    """What pending jobs will still take from each source buffer, by account type.

    Only jobs whose source amount has not moved to transit yet: a job in
    transit has left the balance already.  ``before_job`` counts only jobs
    created before it (older jobs go first at submission).
    """
    rows = conn.execute(
        text("SELECT source_account, SUM(source_amount) AS held FROM conversion_jobs "
             "WHERE status = :pending AND NOT transit_moved "
             "AND (CAST(:before AS bigint) IS NULL OR id < CAST(:before AS bigint)) "
             "GROUP BY source_account"),
        {"pending": conv.PENDING, "before": before_job},
    )
    return {r.source_account.removeprefix("buffer:"): int(r.held) for r in rows}


def lock_buffer(conn: Connection, account_type: str) -> Buffer:
    """One buffer, its row locked: the source's lock, taken by cycles (all buffers)
    and by every submission and manual conversion drawing on it."""
    return load_buffers(conn, lock=True, only=account_type)[account_type]


def move_job(conn: Connection, job: Job, new: str, note: str | None = None,
             **columns: Any) -> Job:
    """Move ``job`` along the state machine, recording the transition and its time."""
    conv.transition(job.status, new)
    sets = ", ".join(f"{k} = :{k}" for k in columns)
    conn.execute(
        text(f"UPDATE conversion_jobs SET status = :new, updated_at = now()"
             f"{', ' + sets if sets else ''} WHERE id = :id"),
        {"new": new, "id": job.id, **columns},
    )
    record_transition(conn, job.id, job.status, new, note)
    return replace(job, status=new, **columns)


def update_job(conn: Connection, job: Job, **columns: Any) -> Job:
    """Change columns other than the status."""
    sets = ", ".join(f"{k} = :{k}" for k in columns)
    conn.execute(text(f"UPDATE conversion_jobs SET {sets}, updated_at = now() WHERE id = :id"),
                 {"id": job.id, **columns})
    return replace(job, **columns)


def record_transition(conn: Connection, job_id: int, old: str | None, new: str,
                      note: str | None) -> None:
    conn.execute(
        text("INSERT INTO conversion_job_transitions (job_id, from_status, to_status, note) "
             "VALUES (:j, :o, :n, :note)"),
        {"j": job_id, "o": old, "n": new, "note": note},
    )


def transitions(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    return [
        {"from": r.from_status, "to": r.to_status, "note": r.note, "at": r.at.isoformat()}
        for r in conn.execute(text("SELECT * FROM conversion_job_transitions WHERE job_id = :j "
                                   "ORDER BY id"), {"j": job_id})
    ]


_ATTEMPT_COLUMNS = ", ".join(Attempt.__dataclass_fields__)


def attempts_of(conn: Connection, job_id: int) -> list[Attempt]:
    return [Attempt(**r._mapping) for r in conn.execute(
        text(f"SELECT {_ATTEMPT_COLUMNS} FROM conversion_attempts WHERE job_id = :j ORDER BY attempt_no"),
        {"j": job_id})]


def insert_attempt(conn: Connection, job: Job, provider: str, key: str, par_amount: int, *,
                   quotes: list[dict[str, Any]] | None = None,
                   decision: str | None = None) -> Attempt:
    """A submission attempt, with the quotes selection saw and why it chose ``provider``."""
    row = conn.execute(
        text("INSERT INTO conversion_attempts (job_id, attempt_no, provider, idempotency_key, "
             "par_amount, quotes, decision) VALUES (:j, :n, :p, :k, :par, CAST(:q AS jsonb), :dec) "
             f"RETURNING {_ATTEMPT_COLUMNS}"),
        {"j": job.id, "n": job.attempts + 1, "p": provider, "k": key, "par": par_amount,
         "q": None if quotes is None else json.dumps(quotes), "dec": decision},
    ).one()
    return Attempt(**row._mapping)


def finish_attempt(conn: Connection, attempt: Attempt, status: str, *, error: str | None = None,
                   provider_ref: str | None = None) -> None:
    """Record the provider's answer (``accepted``) or the attempt's outcome."""
    outcome = status != "accepted"
    conn.execute(
        text("UPDATE conversion_attempts SET status = :s, error = COALESCE(:e, error), "
             "provider_ref = COALESCE(:r, provider_ref), answered_at = COALESCE(answered_at, now()), "
             "outcome_at = CASE WHEN :o THEN now() ELSE outcome_at END WHERE id = :id"),
        {"s": status, "e": error, "r": provider_ref, "o": outcome, "id": attempt.id},
    )
