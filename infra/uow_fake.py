"""A unit of work in memory, for handler tests without a database (``tests/services``).

Same interface as ``infra/uow.py``'s for what the handlers use: ``claim``, ``send``,
``send_later``, ``emit``, ``commit``, re-entry per transaction, ``hold_lock``, and the
repositories ``ledger``, ``alerts``, ``buffers``, ``providers``, ``conversions``,
``journal``.  Leaving a block without ``commit()`` restores the state it found.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Iterator

from domain.buffers import CURRENCY_OF, account_code
from domain.errors import InsufficientFunds, NotFound, Refused, RequestConflict
from domain.ledger import may_go_negative, validate_postings
from domain.conversions import PENDING, transition
from infra.treasury.store import Buffer, Job
from infra.uow import payload_hash


class FakeLedger:
    def __init__(self) -> None:
        self.balance: dict[str, int] = {}
        self.transactions: list[dict[str, Any]] = []

    def post(self, postings, **options: Any) -> int:
        checked = validate_postings(postings)  # balanced per currency, or LedgerError
        for p in checked:
            after = self.balance.get(p.account, 0) + p.amount
            if after < 0 and not may_go_negative(p.account):
                raise InsufficientFunds(f"{p.account} would go negative")
        for p in checked:
            self.balance[p.account] = self.balance.get(p.account, 0) + p.amount
        self.transactions.append({"postings": checked, **options})
        return len(self.transactions)

    def balances(self, codes) -> dict[str, int]:
        return {c: self.balance[c] for c in codes if c in self.balance}

    lock_balances = balances


class FakeAlerts:
    def __init__(self) -> None:
        self.open: dict[str, dict[str, Any]] = {}

    def raise_(self, *, dedupe_key: str, **alert: Any) -> int | None:
        new = dedupe_key not in self.open
        self.open[dedupe_key] = alert
        return len(self.open) if new else None

    def resolve(self, dedupe_key: str, note: str | None = None) -> bool:
        return self.open.pop(dedupe_key, None) is not None

    def resolve_all_except(self, prefix: str, still_true) -> int:
        gone = [k for k in self.open if k.startswith(prefix) and k not in set(still_true)]
        return sum(self.resolve(k) for k in gone)

    def _by_id(self, alert_id: int) -> tuple[str, dict[str, Any]]:
        for n, (key, alert) in enumerate(self.open.items(), start=1):
            if n == alert_id:
                return key, alert
        raise NotFound(f"no alert {alert_id}")

    def acknowledge(self, alert_id: int, by: str) -> dict[str, Any]:
        key, alert = self._by_id(alert_id)
        if alert.get("status", "open") != "open":
            raise Refused(f"alert {alert_id} is {alert['status']}, not open")
        alert.update(status="acknowledged", acknowledged_by=by)
        return {"alert_id": alert_id, "dedupe_key": key, **alert}

    def resolve_by_hand(self, alert_id: int, by: str, note: str) -> dict[str, Any]:
        key, alert = self._by_id(alert_id)
        self.resolved = {**getattr(self, "resolved", {}), key: {**alert, "resolved_by": by,
                                                                "resolution_note": note}}
        return {"alert_id": alert_id, "dedupe_key": key, "status": "resolved",
                **self.resolved[key]}


class FakeBuffers:
    """Buffers whose balances are the fake ledger's ``buffer:`` accounts."""

    def __init__(self, ledger: FakeLedger) -> None:
        self.ledger = ledger
        self.thresholds: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}

    def load(self, *, lock: bool = False) -> dict[str, Any]:
        return {t: self._buffer(t) for t in sorted(self.thresholds)}

    def _buffer(self, account_type: str):
        return Buffer(account_type, CURRENCY_OF[account_type], self.thresholds[account_type],
                      self.ledger.balance.get(account_code(account_type), 0))

    def lock(self, account_type: str):
        return self._buffer(account_type)

    def set_thresholds(self, account_type: str, thresholds, by: str) -> None:
        if account_type not in self.thresholds:
            raise NotFound(f"no buffer {account_type!r}")
        self.thresholds[account_type] = thresholds

    def setting(self, key: str, default: Any) -> Any:
        return self.settings.get(key, default)

    def put_setting(self, key: str, value: Any, by: str) -> None:
        self.settings[key] = value

    def freeze_state(self, *, lock: bool = False) -> dict[str, Any] | None:
        state = self.settings.get("conversions_frozen")
        return state if isinstance(state, dict) and state.get("frozen") else None

    def report_custody(self, account_type: str, balance: int, by: str) -> dict[str, Any]:
        self.custody = [*getattr(self, "custody", []), (account_type, balance, by)]
        return {"report_id": len(self.custody), "account_type": account_type,
                "balance": balance, "as_of": "now", "reported_by": by}


class FakeProviders:
    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}
        self.probes: dict[str, tuple[bool, str | None]] = {}

    def list(self, *, lock: bool = False) -> list[Any]:
        return sorted(self.rows.values(), key=lambda r: (r.priority, r.name))

    def get(self, name: str):
        if name not in self.rows:
            raise NotFound(f"no provider {name!r}")
        return self.rows[name]

    def add(self, row) -> None:
        if row.name in self.rows:
            raise Refused(f"provider {row.name!r} exists already")
        self.rows[row.name] = row

    def update(self, name: str, **fields: Any) -> None:
        if "directions" in fields:
            fields = {**fields, "directions": tuple(fields["directions"])}
        self.rows[name] = replace(self.get(name), **fields)

    def record_probe(self, name: str, healthy: bool, error: str | None) -> None:
        self.probes[name] = (healthy, error)

    def count_outcome(self, name: str, *, success: bool) -> None:
        row = self.get(name)
        self.rows[name] = replace(row, success_count=row.success_count + success,
                                  failure_count=row.failure_count + (not success))

    def client(self, row):
        return self.clients[row.name]


class FakeConversions:
    def __init__(self) -> None:
        self.jobs: dict[int, Any] = {}
        self.levers: list[dict[str, Any]] = []
        self.transitions: dict[int, list[tuple]] = {}
        self.attempt_rows: dict[int, list[Any]] = {}

    def list(self, *, active_only: bool = False, statuses=None, limit: int = 10_000) -> list[Any]:
        jobs = [j for j in self.jobs.values() if statuses is None or j.status in statuses]
        return jobs[:limit]

    def add(self, **job: Any) -> int:
        """A pending job, as the real repository's (``Job`` with its source amount)."""
        job_id, now = len(self.jobs) + 1, datetime.now(timezone.utc)
        source, destination = job["direction"].split("->")
        self.jobs[job_id] = Job(
            job_id, job["kind"], job["direction"], account_code(job["source_type"]),
            account_code(job["destination_type"]), source, destination, job["amount"], None,
            None, PENDING, None, 0, False, job["requested_by"], job["trigger"], None, now, now,
            None, None, None)
        self.transitions.setdefault(job_id, []).append((None, PENDING, None))
        return job_id

    def get(self, job_id: int, *, lock: bool = False):
        if job_id not in self.jobs:
            raise NotFound(f"no conversion job {job_id}")
        return self.jobs[job_id]

    def move(self, job, new: str, note: str | None = None, **columns: Any):
        transition(job.status, new)
        self.transitions.setdefault(job.id, []).append((job.status, new, note))
        self.jobs[job.id] = replace(job, status=new, **columns)
        return self.jobs[job.id]

    def update(self, job, **columns: Any):
        self.jobs[job.id] = replace(job, **columns)
        return self.jobs[job.id]

    def note(self, job, note: str) -> None:
        self.transitions.setdefault(job.id, []).append((job.status, job.status, note))

    def attempts(self, job_id: int) -> list[Any]:
        return list(self.attempt_rows.get(job_id, []))

    def finish_attempt(self, attempt, status: str, *, error: str | None = None,
                       provider_ref: str | None = None) -> None:
        rows = self.attempt_rows[attempt.job_id]
        rows[rows.index(attempt)] = replace(attempt, status=status, error=error)

    def reserved_by_pending(self, *, before_job: int | None = None) -> dict[str, int]:
        return {}

    def record_lever(self, action: str, by: str, **details: Any) -> int:
        self.levers.append({"action": action, "by": by, **details})
        return len(self.levers)


class FakeJournal:
    def __init__(self) -> None:
        self.characters: dict[int, tuple[str, str]] = {}
        self.cycles: dict[str, SimpleNamespace] = {}
        self.participations: dict[str, tuple] = {}
        self.entries: dict[str, Any] = {}

    def register_character(self, character_id: int, name: str, role: str) -> str:
        before = self.characters.get(character_id)
        self.characters[character_id] = (name, role)
        return "created" if before is None else "unchanged" if before == (name, role) else "updated"

    def plan_cycle(self, cycle_id: str) -> bool:
        if cycle_id in self.cycles:
            return False
        self.cycles[cycle_id] = SimpleNamespace(cycle_id=cycle_id, status="planned")
        return True

    def cycle(self, cycle_id: str, *, for_update: bool = False):
        if cycle_id not in self.cycles:
            raise NotFound(f"cycle {cycle_id} does not exist")
        return self.cycles[cycle_id]

    def create_participation(self, participation_id, cycle_id, user_id, character_name,
                             pledged) -> bool:
        self.participations[participation_id] = (cycle_id, user_id, character_name, pledged)
        return True

    def import_entries(self, entries, request_id: str) -> int:
        new = [e for e in entries if e.journal_id not in self.entries]
        self.entries.update({e.journal_id: e for e in new})
        return len(new)


class FakeUnitOfWork:
    """Parameters: actor, request_id, payload, as the real one's."""

    def __init__(self, actor: str | None = None, request_id: str | None = None,
                 payload: Any = None) -> None:
        self.actor, self.request_id, self.payload = actor, request_id, payload
        self.ledger = FakeLedger()
        self.alerts = FakeAlerts()
        self.buffers = FakeBuffers(self.ledger)
        self.providers = FakeProviders()
        self.conversions = FakeConversions()
        self.journal = FakeJournal()
        self.claims: dict[tuple, str] = {}
        self.sent: list[tuple[str, int, dict[str, Any]]] = []  # published after commit
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.locks: set[tuple[int, int]] = set()
        self.commits = 0
        self._pending: list[tuple[str, tuple]] = []

    _STATE = ("ledger", "alerts", "buffers", "providers", "conversions", "journal", "claims")

    def __enter__(self) -> "FakeUnitOfWork":
        self._saved = copy.deepcopy({k: getattr(self, k) for k in self._STATE})
        self._pending, self.committed = [], False
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self.committed:
            for k, v in self._saved.items():
                setattr(self, k, v)

    def claim(self) -> bool:
        key, digest = (self.actor, self.request_id), payload_hash(self.payload)
        if key not in self.claims:
            self.claims[key] = digest
            return True
        if self.claims[key] != digest:
            raise RequestConflict(f"request_id {self.request_id!r} was used with another payload")
        return False

    def send(self, actor: str, **kwargs: Any) -> None:
        self._pending.append(("send", (actor, 0, kwargs)))

    def send_later(self, actor: str, delay_ms: int, **kwargs: Any) -> None:
        self._pending.append(("send", (actor, delay_ms, kwargs)))

    def emit(self, event: str, data: dict[str, Any], recipient: str | None = None) -> None:
        self._pending.append(("emit", (event, data, recipient)))

    def emit_many(self, events) -> None:
        for e in events:
            self._pending.append(("emit", tuple(e)))

    @contextmanager
    def hold_lock(self, namespace: int, key: int, wait_s: float = 0) -> Iterator[bool]:
        got = (namespace, key) not in self.locks
        self.locks.add((namespace, key))
        try:
            yield got
        finally:
            if got:
                self.locks.discard((namespace, key))

    def commit(self) -> None:
        self.committed = True
        self.commits += 1
        for kind, item in self._pending:
            (self.sent if kind == "send" else self.events).append(item)
        self._pending = []
