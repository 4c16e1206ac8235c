"""A unit of work in memory, for handler tests without a database (``tests/services``).

Same interface as ``infra/uow.py``'s for what the handlers use: ``claim``, ``send``,
``send_later``, ``emit``, ``commit``, re-entry per transaction, ``hold_lock``, and the
repositories ``ledger``, ``alerts``, ``buffers``, ``providers``, ``conversions``,
``journal``, ``wallets``, ``guard``.  Leaving a block without ``commit()`` restores the
state it found (what a side transaction committed on its own, ``aside``, stays).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from domain import guard as rules
from domain.buffers import CURRENCY_OF, account_code
from domain.errors import InsufficientFunds, NotFound, RequestConflict
from domain.guard import (BALANCE_ALERT_KINDS, DAILY_WINDOW, DEFAULT_TIER, EXPIRING_ALERT_KINDS,
                          WEEKLY_WINDOW, GuardContext, LimitTable, Limits, Usage)
from domain.ledger import may_go_negative, validate_postings
from infra.treasury.store import Buffer
from infra.uow import payload_hash
from infra.wallets.repository import INLINE_ALERT_WALLETS


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

    def setting(self, key: str, default: Any) -> Any:
        return self.settings.get(key, default)

    def put_setting(self, key: str, value: Any, by: str) -> None:
        self.settings[key] = value

    def freeze_state(self, *, lock: bool = False) -> dict[str, Any] | None:
        state = self.settings.get("conversions_frozen")
        return state if isinstance(state, dict) and state.get("frozen") else None


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

    def update(self, name: str, **fields: Any) -> None:
        self.rows[name] = replace(self.get(name), **fields)

    def record_probe(self, name: str, healthy: bool, error: str | None) -> None:
        self.probes[name] = (healthy, error)

    def client(self, row):
        return self.clients[row.name]


class FakeConversions:
    def __init__(self) -> None:
        self.jobs: dict[int, Any] = {}
        self.levers: list[dict[str, Any]] = []

    def list(self, *, active_only: bool = False, statuses=None, limit: int = 10_000) -> list[Any]:
        return list(self.jobs.values())[:limit]

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


@dataclass
class FakeWalletState:
    """What the wallets and the guard keep: tiers, limits, the audit trail, and the clock
    the audit lines and the trailing windows read (``now``; set it to move time)."""

    now: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    tiers: dict[str, str] = field(default_factory=dict)
    tier_changes: list[dict[str, Any]] = field(default_factory=list)
    limits: dict[tuple[str, str], Limits] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)


class FakeGuard:
    """``uow.guard`` in memory; its state is the unit's ``wallet_state``."""

    def __init__(self, unit: "FakeUnitOfWork") -> None:
        self.unit = unit

    @property
    def state(self) -> FakeWalletState:
        return self.unit.wallet_state

    def tiers_of(self, user_ids) -> dict[str, str]:
        return {u: self.state.tiers[u] for u in user_ids if u in self.state.tiers}

    def tier(self, user_id: str, *, lock: bool = False) -> str:
        return self.state.tiers.get(user_id, DEFAULT_TIER)

    def store_tier(self, user_id: str, tier: str, previous: str, request_id: str | None) -> None:
        self.state.tiers[user_id] = tier
        self.state.tier_changes.append({"user_id": user_id, "previous_tier": previous,
                                        "tier": tier, "request_id": request_id})

    def limits(self) -> LimitTable:
        return LimitTable(dict(self.state.limits))

    def set_limits(self, limits: Limits, by: str) -> Limits:
        self.state.limits[(limits.tier, limits.currency)] = limits
        return limits

    def usage(self, wallets, now: datetime | None = None) -> dict[tuple[str, str], Usage]:
        now = now or self.state.now
        out: dict[tuple[str, str], Usage] = {}
        for line in self.state.audit:
            key = (line["user_id"], line["currency"])
            if key in set(wallets) and line["user_initiated"] and line["at"] > now - WEEKLY_WINDOW:
                day = abs(line["amount"]) if line["at"] > now - DAILY_WINDOW else 0
                was = out.get(key, Usage())
                out[key] = Usage(was.daily + day, was.weekly + abs(line["amount"]))
        return out

    def context(self, changes, now: datetime | None = None) -> GuardContext:
        wallets = sorted({(c.user_id, c.currency) for c, _ in changes})
        return GuardContext(self.tiers_of({u for u, _ in wallets}), self.limits(),
                            self.usage(wallets, now), {})

    def open_alerts_of(self, wallets) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for user, cur in wallets:
            for kind in BALANCE_ALERT_KINDS:
                key = rules.alert_key(kind, user, cur)
                if key in self.unit.alerts.open:
                    data = self.unit.alerts.open[key].get("data") or {}
                    out[key] = data.get("balance_before") if kind == "significant_drop" else None
        return out

    def resolve_open(self, context: GuardContext, keys) -> None:
        for k in keys:
            if k in context.open_alerts:
                self.unit.alerts.resolve(k, "balance back within limits")

    def refresh_balance_alerts(self, tiers, moves, txn_id: int) -> None:
        context = GuardContext(tiers, self.limits(), {}, self.open_alerts_of(moves))
        raised, resolve = rules.alert_decisions(context, moves, txn_id, self.state.now)
        self.resolve_open(context, resolve)
        self._raise(raised)

    def _raise(self, raised) -> None:
        for kind, severity, subject, key, data in raised:
            self.unit.alerts.raise_(kind=kind, severity=severity, subject=subject,
                                    dedupe_key=key, data=data)

    def alerts_of_chunk(self, txn_id: int, after=None, limit: int = 5_000):
        firsts: dict[tuple[str, str], int] = {}
        for line in self.state.audit:
            key = (line["user_id"], line["currency"])
            if line["transaction_id"] == txn_id and (after is None or key > after):
                firsts.setdefault(key, line["balance_before"])
        chunk = sorted(firsts)[:limit]
        if not chunk:
            return None
        moves = {k: (firsts[k], self.unit.ledger.balance.get(f"user:{k[0]}:{k[1]}", 0))
                 for k in chunk}
        self.refresh_balance_alerts(self.tiers_of({u for u, _ in moves}), moves, txn_id)
        return max(moves) if len(chunk) == limit else None

    def expire_balance_alerts(self) -> None:
        for key, alert in list(self.unit.alerts.open.items()):
            clears = (alert.get("data") or {}).get("clears_at")
            if alert.get("kind") in EXPIRING_ALERT_KINDS and clears is not None \
                    and datetime.fromisoformat(clears) <= self.state.now:
                self.unit.alerts.resolve(key, "window passed")

    def tell_refusal(self, events, raised) -> None:
        """Committed on its own: kept whatever the unit's transaction does."""
        self.unit.events.extend(tuple(e) for e in events)
        self.unit.aside(lambda: self._raise(raised))


class FakeWallets:
    """``uow.wallets`` in memory: balances are the fake ledger's, the audit trail and tiers
    the unit's ``wallet_state``."""

    def __init__(self, unit: "FakeUnitOfWork", guard: FakeGuard) -> None:
        self.unit = unit
        self.guard = guard

    def lock(self, wanted, changes, *, with_context: bool, now: datetime | None = None):
        balances = {code: self.unit.ledger.balance.get(code, 0) for code in wanted}
        if not with_context:
            return balances, None
        paired = [(c, 0) for c in changes if c.user_initiated]
        context = self.guard.context(paired, now)
        context.tiers = self.guard.tiers_of({c.user_id for c in changes})
        context.open_alerts = self.guard.open_alerts_of({(c.user_id, c.currency) for c in changes})
        return balances, context

    def lock_balances(self, codes) -> dict[str, int]:
        return {c: self.unit.ledger.balance[c] for c in codes if c in self.unit.ledger.balance}

    def _audit(self, changes, txn_id: int, tiers) -> None:
        for c, before in changes:
            tier = tiers.get(c.user_id, DEFAULT_TIER)
            self.guard.state.audit.append({
                "transaction_id": txn_id, "user_id": c.user_id, "currency": c.currency,
                "kind": c.kind, "user_initiated": c.user_initiated, "amount": c.amount,
                "balance_before": before, "balance_after": before + c.amount,
                "reason": c.reason, "performed_by": c.performed_by, "tier": tier,
                "risk_score": rules.risk_score(before, c.amount, tier), "at": self.guard.state.now})

    def post_and_record(self, changes, postings, tiers, raised, events, *, kind: str,
                        memo: str | None = None, metadata=None) -> int:
        txn_id = self.unit.ledger.post(postings, kind=kind, memo=memo, metadata=metadata)
        self._audit(changes, txn_id, tiers)
        for _, data, _ in events:
            data["transaction_id"] = txn_id
        for a in raised:
            a[4]["transaction_id"] = txn_id
        self.unit.emit_many(events)
        self.guard._raise(raised)
        return txn_id

    def record(self, changes, txn_id: int, *, context: GuardContext | None = None,
               events=()) -> None:
        if not changes:
            return
        tiers = context.tiers if context is not None else self.guard.tiers_of(
            {c.user_id for c, _ in changes})
        self._audit(changes, txn_id, tiers)
        self.unit.emit_many(events)
        moves = rules.wallet_moves(changes)
        if len(moves) <= INLINE_ALERT_WALLETS:
            self.guard.refresh_balance_alerts(tiers, moves, txn_id)
        else:
            self.unit.send("evaluate_balance_alerts", request_id=f"balance-alerts:{txn_id}:0",
                           transaction_id=txn_id)


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
        self.wallet_state = FakeWalletState()
        self.guard = FakeGuard(self)
        self.wallets = FakeWallets(self, self.guard)
        self.claims: dict[tuple, str] = {}
        self.sent: list[tuple[str, int, dict[str, Any]]] = []  # published after commit
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.locks: set[tuple[int, int]] = set()
        self.commits = 0
        self._pending: list[tuple[str, tuple]] = []

    _STATE = ("ledger", "alerts", "buffers", "providers", "conversions", "journal",
              "wallet_state", "claims")

    def __enter__(self) -> "FakeUnitOfWork":
        self._saved = copy.deepcopy({k: getattr(self, k) for k in self._STATE})
        self._pending, self.committed = [], False
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self.committed:
            for k, v in self._saved.items():
                setattr(self, k, v)

    def aside(self, write: Callable[[], None]) -> None:
        """``write`` in a transaction of its own, committed now: it stays when this unit's
        transaction rolls back (applied to the state a rollback restores too)."""
        write()
        if getattr(self, "_saved", None) is not None and not getattr(self, "committed", True):
            live = {k: getattr(self, k) for k in self._STATE}
            for k, v in self._saved.items():
                setattr(self, k, v)
            try:
                write()
            finally:
                for k, v in live.items():
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
