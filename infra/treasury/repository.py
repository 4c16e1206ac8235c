"""The treasury engine's repositories, as the unit of work hands them out:
``uow.conversions`` (jobs, attempts, transitions, the levers' audit), ``uow.buffers``
(buffers, thresholds, settings, the freeze) and ``uow.providers`` (provider rows, their
outcomes and probes, and a client to call one).

Each binds the unit of work's connection to the table functions of ``store``; the
in-memory twins in ``infra/uow_fake.py`` implement the same methods.
"""

from __future__ import annotations

from typing import Any

from infra import providers as clients
from infra.treasury import reconcile, store
from infra.treasury.store import Attempt, Buffer, Job, ProviderRow


class ConversionRepository:
    """Conversion jobs and their attempts.  Parameters: conn, the open connection."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def add(self, **job: Any) -> int:
        """A pending job (``kind, direction, source_type, destination_type, amount,
        requested_by, trigger``), its first transition recorded."""
        return store.insert_job(self.conn, **job)

    def get(self, job_id: int, *, lock: bool = False) -> Job:
        return store.get_job(self.conn, job_id, lock=lock)

    def list(self, *, active_only: bool = False, statuses: tuple[str, ...] | None = None,
             limit: int = 10_000) -> list[Job]:
        return store.list_jobs(self.conn, active_only=active_only, statuses=statuses, limit=limit)

    def move(self, job: Job, new: str, note: str | None = None, **columns: Any) -> Job:
        return store.move_job(self.conn, job, new, note, **columns)

    def update(self, job: Job, **columns: Any) -> Job:
        return store.update_job(self.conn, job, **columns)

    def note(self, job: Job, note: str) -> None:
        """A transition row that keeps the status (what happened meanwhile)."""
        store.record_transition(self.conn, job.id, job.status, job.status, note)

    def attempts(self, job_id: int) -> list[Attempt]:
        return store.attempts_of(self.conn, job_id)

    def add_attempt(self, job: Job, provider: str, key: str, par_amount: int, *,
                    quotes: list[dict[str, Any]] | None = None,
                    decision: str | None = None) -> Attempt:
        return store.insert_attempt(self.conn, job, provider, key, par_amount, quotes=quotes,
                                    decision=decision)

    def finish_attempt(self, attempt: Attempt, status: str, *, error: str | None = None,
                       provider_ref: str | None = None) -> None:
        store.finish_attempt(self.conn, attempt, status, error=error, provider_ref=provider_ref)

    def reserved_by_pending(self, *, before_job: int | None = None) -> dict[str, int]:
        return store.reserved_by_pending(self.conn, before_job=before_job)

    def record_lever(self, action: str, by: str, **details: Any) -> int:
        """One row of ``treasury_overrides`` (``job_id, reason, evidence, data``)."""
        return store.record_override(self.conn, action, by, **details)


class BufferRepository:
    """Buffers with their balances, and the treasury's settings.  Parameters: conn."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def load(self, *, lock: bool = False) -> dict[str, Buffer]:
        return store.load_buffers(self.conn, lock=lock)

    def lock(self, account_type: str) -> Buffer:
        return store.lock_buffer(self.conn, account_type)

    def set_thresholds(self, account_type: str, thresholds, by: str) -> None:
        store.set_thresholds(self.conn, account_type, thresholds, by)

    def setting(self, key: str, default: Any) -> Any:
        return store.get_setting(self.conn, key, default)

    def put_setting(self, key: str, value: Any, by: str) -> None:
        store.put_setting(self.conn, key, value, by)

    def freeze_state(self, *, lock: bool = False) -> dict[str, Any] | None:
        return store.freeze_state(self.conn, lock=lock)

    def report_custody(self, account_type: str, balance: int, by: str) -> dict[str, Any]:
        """A custodian's report of a buffer (``report_id, account_type, balance, as_of,
        reported_by``)."""
        return reconcile.record_custody(self.conn, account_type, balance, by)


class ProviderRepository:
    """Conversion providers.  Parameters: conn; engine, for the clients (a simulated
    provider keeps its orders in the database)."""

    def __init__(self, conn, engine) -> None:
        self.conn = conn
        self.engine = engine

    def list(self, *, lock: bool = False) -> list[ProviderRow]:
        return store.load_providers(self.conn, lock=lock)

    def get(self, name: str) -> ProviderRow:
        return store.get_provider(self.conn, name)

    def add(self, row: ProviderRow) -> None:
        """A new provider; a name taken already is Refused."""
        store.add_provider(self.conn, row)

    def update(self, name: str, **fields: Any) -> None:
        store.update_provider(self.conn, name, **fields)

    def count_outcome(self, name: str, *, success: bool) -> None:
        store.count_outcome(self.conn, name, success=success)

    def record_probe(self, name: str, healthy: bool, error: str | None) -> None:
        store.record_probe(self.conn, name, healthy, error)

    def client(self, row: ProviderRow) -> clients.Provider:
        """The provider itself (called outside any transaction)."""
        return clients.build(row.name, row.kind, row.config, self.engine)
