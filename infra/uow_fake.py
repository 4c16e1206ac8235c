"""A unit of work in memory, for handler tests without a database (``tests/services``).

Same interface as ``infra/uow.py``'s for what the handlers use: ``claim``, ``send``,
``send_later``, ``emit``, ``commit``, re-entry per transaction, ``hold_lock``, and the
repositories ``ledger``, ``alerts``, ``buffers``, ``providers``, ``conversions``,
``journal``, ``markets``, ``challenges``, ``wallets``, ``guard``.  Leaving a block without
``commit()`` restores the state it found (what a side transaction committed on its own,
``aside``, stays).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from domain import accounts, request_ids
from domain import conversions as conv
from domain import guard as rules
from domain.buffers import CURRENCY_OF, account_code
from domain.challenges import CHALLENGE, MATCH, MATCH_SETTLED, Challenge, MatchSettlement, SideTally
from domain.errors import InsufficientFunds, LedgerError, NotFound, Refused, RequestConflict
from domain.guard import (BALANCE_ALERT_KINDS, DAILY_WINDOW, DEFAULT_TIER, EXPIRING_ALERT_KINDS,
                          WEEKLY_WINDOW, GuardContext, LimitTable, Limits, Usage)
from domain.ledger import Posting, may_go_negative, validate_postings
from domain.markets import (
    COMMITMENT,
    COMPLETED,
    DISPUTE,
    DISTRIBUTION,
    FAILED,
    MARKET,
    PENDING,
    ROLLED_BACK,
    Commitment,
    Market,
    line,
)
from domain.resends import check_same_terms
from infra.challenges.repository import (
    Closed,
    Fill,
    Participant,
    Persona,
    ReservedMatch,
    Seat,
    Written,
)
from infra.markets.repository import DisputeRow, DistributionRow, Paid
from infra.treasury.store import Buffer, Job
from infra.uow import payload_hash
from infra.wallets.repository import INLINE_ALERT_WALLETS


class FakeLedger:
    def __init__(self) -> None:
        self.balance: dict[str, int] = {}
        self.transactions: list[dict[str, Any]] = []

    def post(self, postings, **options: Any) -> int:
        key = options.get("idempotency_key")
        earlier = next((i for i, t in enumerate(self.transactions, 1)
                        if key is not None and t.get("idempotency_key") == key), None)
        if earlier is not None:  # as the ledger: the earlier transaction, nothing posted again
            return earlier
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

    def reverse(self, txn_id: int, **options: Any) -> int:
        """A transaction of the opposite postings (no limit checked: a reversal)."""
        original = self.transactions[txn_id - 1]["postings"]
        for p in original:
            self.balance[p.account] -= p.amount
        self.transactions.append({"postings": [Posting(p.account, p.currency, -p.amount)
                                               for p in original],
                                  "reverses": txn_id, **options})
        return len(self.transactions)

    lock_balances = balances


class FakeAlerts:
    """Open alerts by key; their events go to ``unit`` (the fake unit of work)."""

    def __init__(self, unit: Any = None) -> None:
        self.open: dict[str, dict[str, Any]] = {}
        self.unit = unit

    def resolve_keys(self, keys) -> list[SimpleNamespace]:
        """Resolve the open ones of ``keys`` (a merged statement's ``rs``): their rows."""
        return [SimpleNamespace(dedupe_key=k, **self.open.pop(k)) for k in keys if k in self.open]

    def raise_items(self, items) -> dict[str, int]:
        """Open ``items`` (a merged statement's ``al``): ``{key: id}`` of the new ones."""
        return {a.dedupe_key: i for a in items
                if (i := self.raise_(kind=a.kind, severity=a.severity, subject=a.subject,
                                     dedupe_key=a.dedupe_key, data=a.data)) is not None}

    def announce_resolved(self, rows, note: str | None = None, also=()) -> None:
        self.unit.emit_many([("alert.resolved", {"dedupe_key": r.dedupe_key, "note": note},
                              "admin") for r in rows] + list(also))

    def announce_raised(self, items, new: dict[str, int]) -> None:
        self.unit.emit_many([("alert.raised", {"dedupe_key": a.dedupe_key, "kind": a.kind},
                              "admin") for a in items if a.dedupe_key in new])

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
            None, conv.PENDING, None, 0, False, job["requested_by"], job["trigger"], None, now, now,
            None, None, None)
        self.transitions.setdefault(job_id, []).append((None, conv.PENDING, None))
        return job_id

    def get(self, job_id: int, *, lock: bool = False):
        if job_id not in self.jobs:
            raise NotFound(f"no conversion job {job_id}")
        return self.jobs[job_id]

    def move(self, job, new: str, note: str | None = None, **columns: Any):
        conv.transition(job.status, new)
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


class FakeMarkets:
    """Markets in memory, paying through the fake ledger; ``notify_users`` emits on the unit.

    Parameters: ledger, the fake ledger; unit, the fake unit of work (not copied with the
    state a block restores)."""

    def __init__(self, ledger: FakeLedger, unit) -> None:
        self.ledger, self.unit = ledger, unit
        self.markets: dict[str, dict[str, Any]] = {}
        self.commitments: dict[str, dict[str, Any]] = {}
        self.distributions: list[dict[str, Any]] = []
        self.lines: dict[int, list[Any]] = {}
        self.transactions: dict[int, dict[str, Any]] = {}  # txn -> distribution, purpose, reversal
        self.disputes: list[dict[str, Any]] = []

    def __deepcopy__(self, memo):
        twin = copy.copy(self)
        for k, v in vars(self).items():
            if k != "unit":
                setattr(twin, k, copy.deepcopy(v, memo))
        return twin

    def get(self, market_id: str, lock=None) -> Market:
        if market_id not in self.markets:
            raise NotFound(f"market {market_id} does not exist")
        return self.markets[market_id]["market"]

    def definition(self, market_id: str) -> dict[str, Any] | None:
        row = self.markets.get(market_id)
        return None if row is None else row["definition"]

    def add(self, market: Market, title: str, labels) -> None:
        self.markets[market.market_id] = {"market": market, "definition": {
            "market_id": market.market_id, "title": title, "kind": market.kind,
            "currency": market.currency, "creator_id": market.creator_id,
            "creator_fee_bps": market.creator_fee_bps, "house_fee_bps": market.house_fee_bps,
            "options": [{"option_id": o, "label": lb} for o, lb in zip(market.options, labels)]}}

    def set_status(self, market_id: str, status: str) -> None:
        market = self.get(market_id)
        MARKET.check(market.status, status)
        self.markets[market_id]["market"] = replace(market, status=status)

    def find_commitment(self, commitment_id: str) -> dict[str, Any] | None:
        return self.commitments.get(commitment_id)

    def add_commitment(self, market: Market, c: Commitment, position, wager,
                       transaction_id: int) -> None:
        txn = transaction_id
        self.commitments[c.commitment_id] = {
            "commitment_id": c.commitment_id, "market_id": market.market_id,
            "user_id": c.user_id, "option_id": c.option_id, "position": position,
            "method": c.method, "amount": c.amount, "status": "active", "wallet": wager.account,
            "transaction_id": txn}

    def _of(self, market_id: str, status: str) -> list[dict[str, Any]]:
        return sorted((c for c in self.commitments.values()
                       if c["market_id"] == market_id and c["status"] == status),
                      key=lambda c: (c["wallet"], c["commitment_id"]))

    def option_totals(self, market_id: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for c in self._of(market_id, "active"):
            totals[c["option_id"]] = totals.get(c["option_id"], 0) + c["amount"]
        return totals

    def set_commitments_status(self, market_id: str, old: str, new: str) -> int:
        COMMITMENT.check(old, new)
        moved = self._of(market_id, old)
        for c in moved:
            c["status"] = new
        return len(moved)

    def add_distribution(self, market_id, winning_option_id, requested_by, reason) -> int:
        self.distributions.append({
            "id": len(self.distributions) + 1, "market_id": market_id,
            "kind": "void" if winning_option_id is None else "resolved",
            "winning_option_id": winning_option_id, "status": PENDING,
            "requested_by": requested_by, "reason": reason, "retries": 0})
        return len(self.distributions)

    def _dist(self, distribution_id: int) -> dict[str, Any]:
        if not 0 < distribution_id <= len(self.distributions):
            raise NotFound(f"distribution {distribution_id} does not exist")
        return self.distributions[distribution_id - 1]

    def distribution(self, distribution_id: int, *, lock: bool = False) -> DistributionRow:
        d = self._dist(distribution_id)
        return DistributionRow(d["id"], d["market_id"], d["kind"], d["winning_option_id"],
                               d["status"], d["requested_by"], d["reason"])

    def latest_distribution(self, market_id: str, *, lock: bool = False):
        ids = [d["id"] for d in self.distributions if d["market_id"] == market_id]
        return self.distribution(ids[-1]) if ids else None

    def distribution_kind(self, distribution_id: int) -> str:
        return self._dist(distribution_id)["kind"]

    def _move(self, distribution_id: int, status: str, **columns: Any) -> None:
        d = self._dist(distribution_id)
        DISTRIBUTION.check(d["status"], status)
        d.update(status=status, **columns)

    def complete_distribution(self, distribution_id, t, breakage, paid: Paid) -> None:
        self._move(distribution_id, COMPLETED, kind=t.kind, terms=t, breakage=breakage,
                   paid=paid.paid)

    def fail_distribution(self, distribution_id: int, failure: str) -> None:
        self._move(distribution_id, FAILED, failure=failure[:500])

    def roll_back_distribution(self, distribution_id: int, by: str, reason: str) -> None:
        self._move(distribution_id, ROLLED_BACK, rolled_back_by=by, rollback_reason=reason)

    def retry_distribution(self, distribution_id: int, by: str) -> int:
        d = self._dist(distribution_id)
        self._move(distribution_id, PENDING, retries=d["retries"] + 1, retried_by=by)
        return d["retries"]

    def escrow_held(self, market: Market) -> int:
        return self.ledger.balance.get(accounts.market_escrow(market.market_id), 0)

    def pay_lines(self, market: Market, distribution_id: int, t, batch: int) -> Paid:
        """As the database does: every line, one ledger transaction per batch that pays."""
        active = self._of(market.market_id, "active")
        lines = [line(t, Commitment(c["commitment_id"], c["user_id"], c["option_id"],
                                    c["amount"], c["method"])) for c in active]
        self.set_commitments_status(market.market_id, "active", "settled")
        self.lines[distribution_id] = lines
        txns = []
        for start in range(0, len(active), batch):
            paid: dict[str, int] = {}
            for c, ln in zip(active[start:start + batch], lines[start:start + batch]):
                if ln.payout:
                    paid[c["wallet"]] = paid.get(c["wallet"], 0) + ln.payout
            if paid:
                escrow = Posting(accounts.market_escrow(market.market_id), market.currency,
                                 -sum(paid.values()))
                txns.append(self.ledger.post(
                    [*(Posting(w, market.currency, a) for w, a in paid.items()), escrow],
                    kind="market_refund" if t.refunding else "market_payout"))
        self.add_transactions(distribution_id, txns, "refunds" if t.refunding else "payouts")
        return Paid(sum(ln.payout for ln in lines), len(lines),
                    sum(ln.result == "won" for ln in lines), txns)

    def done_paying(self) -> None:
        pass

    def add_transactions(self, distribution_id: int, transaction_ids, purpose: str) -> None:
        for t in transaction_ids:
            self.transactions[t] = {"distribution_id": distribution_id, "purpose": purpose,
                                    "reversal_id": None}

    def transactions_of(self, distribution_id: int) -> list[tuple[int, str]]:
        return sorted(((t, r["purpose"]) for t, r in self.transactions.items()
                       if r["distribution_id"] == distribution_id and r["reversal_id"] is None),
                      reverse=True)

    def reverse(self, transaction_id: int, *, memo: str, reason: str, by: str) -> int:
        reversal = self.ledger.reverse(transaction_id, kind="market_rollback", memo=memo)
        self.transactions[transaction_id]["reversal_id"] = reversal
        return reversal

    def notify_users(self, event: str, distribution_id: int, market: Market, *,
                     only_paid: bool) -> int:
        by_user: dict[str, list[Any]] = {}
        for ln in self.lines.get(distribution_id, []):
            if ln.payout > 0 or not only_paid:
                by_user.setdefault(ln.commitment.user_id, []).append(ln)
        for user, lns in sorted(by_user.items()):
            staked, payout = sum(ln.commitment.amount for ln in lns), sum(ln.payout for ln in lns)
            results = {ln.result for ln in lns}
            self.unit.emit(event, {
                "market_id": market.market_id, "distribution_id": distribution_id,
                "currency": market.currency, "user_id": user, "commitments": len(lns),
                "staked": staked, "payout": payout, "profit": payout - staked,
                "result": next(r for r in ("refunded", "won", "lost") if r in results)}, user)
        return len(by_user)

    def open_dispute(self, market_id: str):
        for d in self.disputes:
            if d["market_id"] == market_id and d["status"] == "open":
                return DisputeRow(d["id"], market_id, d["distribution_id"], d["status"])
        return None

    def add_dispute(self, market_id: str, distribution_id: int, reason: str, by: str) -> int:
        self.disputes.append({"id": len(self.disputes) + 1, "market_id": market_id,
                              "distribution_id": distribution_id, "reason": reason,
                              "disputed_by": by, "status": "open", "reresolved": None})
        return len(self.disputes)

    def end_dispute(self, dispute_id: int, status: str, by: str, note) -> None:
        d = self.disputes[dispute_id - 1]
        DISPUTE.check(d["status"], status)
        d.update(status=status, ended_by=by, end_note=note)

    def record_reresolution(self, market_id: str, distribution_id: int, outcome: str):
        for d in reversed(self.disputes):
            if d["market_id"] == market_id and d["status"] == "rolled_back" \
                    and d["reresolved"] is None:
                d["reresolved"] = (distribution_id, outcome)
                return d["id"]
        return None


class FakePersonas:
    """``uow.personas`` in memory: it adds to the pool the fake challenges assign from
    (``uow.challenges.personas``), as the real one adds to ``shadow_personas``."""

    def __init__(self, unit: "FakeUnitOfWork") -> None:
        self.unit = unit

    @property
    def pool(self) -> list[Persona]:
        return self.unit.challenges.personas

    def add(self, code: str, display_name: str, category: str) -> int | None:
        if any(p.code == code for p in self.pool):
            return None
        persona_id = max((p.id for p in self.pool), default=0) + 1
        self.pool.append(Persona(persona_id, code, display_name, category))
        return persona_id


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

    def post_and_record_many(self, items, tiers) -> list[int]:
        # One item after the other: a refusal part-way leaves the earlier ones in the fake's
        # rows, where the real statement writes none (a refused group is rolled back).
        return [self._post_and_record(i, tiers) for i in items]

    def _post_and_record(self, item, tiers) -> int:
        txn_id = self.unit.ledger.post(item.postings, kind=item.kind, memo=item.memo,
                                       metadata=item.metadata)
        self._audit(item.changes, txn_id, tiers)
        events = list(item.events)
        for _, data, _ in events:
            data["transaction_id"] = txn_id
        for a in item.raised:
            a[4]["transaction_id"] = txn_id
        self.unit.emit_many(events)
        self.guard._raise(item.raised)
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
            self.unit.send("evaluate_balance_alerts", request_id=request_ids.next_step("balance-alerts", txn_id, 0),
                           transaction_id=txn_id)
class FakeChallenges:
    """Treasury balancing's rows in memory, with the database's guarantees the handlers
    rely on (a persona once per challenge, a user once per challenge, guarded statuses).

    ``personas`` is the pool (add ``Persona`` rows); ``now`` the transaction time."""

    def __init__(self, unit: Any, ledger: FakeLedger, alerts: FakeAlerts) -> None:
        self.unit, self.ledger, self.alerts = unit, ledger, alerts
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.challenges: dict[str, Challenge] = {}
        self.participants: dict[int, dict[str, Any]] = {}
        self.configs: dict[str, Any] = {}
        self.config_changes: list[tuple[str, int, str, str]] = []
        self.fills: dict[int, dict[str, Any]] = {}
        self.matches: dict[int, dict[str, Any]] = {}
        self.personas: list[Persona] = []
        self.retries: dict[str, int] = {}

    # --- challenges
    def get(self, challenge_id: str, *, lock: bool = False) -> Challenge:
        if challenge_id not in self.challenges:
            raise NotFound(f"challenge {challenge_id} does not exist")
        return self.challenges[challenge_id]

    def open_new(self, challenge: Challenge):
        existing = self.challenges.get(challenge.challenge_id)
        if existing is None:
            self.challenges[challenge.challenge_id] = challenge
            return self.now
        check_same_terms(f"challenge {challenge.challenge_id}", existing.terms, challenge.terms)
        return None

    def _move(self, challenge_id: str, new: str, **fields: Any) -> bool:
        ch = self.get(challenge_id)
        if ch.status not in CHALLENGE.sources(new):
            return False
        self.challenges[challenge_id] = replace(ch, status=new, **fields)
        return True

    def mark_settlement_failed(self, challenge_id: str, reason: str) -> bool:
        return self._move(challenge_id, "settlement_failed")

    def reopen_settlement(self, challenge_id: str) -> int:
        self._move(challenge_id, "resolved")
        self.retries[challenge_id] = self.retries.get(challenge_id, 0) + 1
        return self.retries[challenge_id]

    # --- participants
    def _of(self, challenge_id: str) -> list[dict[str, Any]]:
        return [p for p in self.participants.values() if p["challenge_id"] == challenge_id]

    def _waiting(self, challenge_id: str, side: str) -> list[Participant]:
        held = {m["participant_id"] for m in self.matches.values()}
        return [Participant(p["id"], p["user_id"], p["side"]) for p in self._of(challenge_id)
                if p["side"] == side and p["paired_with"] is None and p["match_id"] is None
                and not p["settled"] and p["id"] not in held]

    def join_context(self, challenge_id: str, user_ids):
        mine = self._of(challenge_id)
        return self.now, len(mine), {p["user_id"] for p in mine} & set(user_ids)

    def add_participants_waiting(self, challenge: Challenge, joins):
        for user_id, side, txn in joins:
            if any(p["user_id"] == user_id for p in self._of(challenge.challenge_id)):
                raise Refused("unique violation: (challenge_id, user_id)")
            pid = len(self.participants) + 1
            self.participants[pid] = {
                "id": pid, "challenge_id": challenge.challenge_id, "user_id": user_id,
                "side": side, "stake": challenge.stake, "join_txn": txn, "paired_with": None,
                "match_id": None, "outcome": None, "payout": None, "settled": False}
        k = min(self.waiting_counts(challenge.challenge_id).values())
        return (self.waiting(challenge.challenge_id, "YES", k),
                self.waiting(challenge.challenge_id, "NO", k))

    def waiting_counts(self, challenge_id: str) -> dict[str, int]:
        return {s: len(self._waiting(challenge_id, s)) for s in ("YES", "NO")}

    def waiting(self, challenge_id: str, side: str, limit: int) -> list[Participant]:
        return self._waiting(challenge_id, side)[:limit]

    def pair(self, pairs, events) -> None:
        for a, b in pairs:
            self.participants[a.id]["paired_with"] = b.id
            self.participants[b.id]["paired_with"] = a.id
        self.unit.emit_many(events)

    def tallies(self, challenge_id: str):
        def side(s: str) -> SideTally:
            mine = [p for p in self._of(challenge_id) if p["side"] == s]
            return SideTally(len(mine), sum(p["stake"] for p in mine),
                             sum(p["paired_with"] is None and p["match_id"] is None for p in mine))
        return side("YES"), side("NO")

    # --- the treasury config
    def config(self, challenge_id: str, *, lock: bool = False):
        return self.configs.get(challenge_id)

    def save_config(self, challenge_id: str, cfg) -> None:
        self.configs[challenge_id] = cfg

    def configure(self, challenge_id: str, cfg, admin_id: str, resolve_keys=()) -> Written:
        self.configs[challenge_id] = cfg
        self.config_changes.append((challenge_id, cfg.max_risk, cfg.notes, admin_id))
        return Written(self.alerts.resolve_keys(resolve_keys), {})

    # --- fills and matches
    def add_fill(self, challenge_id: str, side: str, requested: int, admin_id: str,
                 request_id: str, next_actor: str, next_kwargs: dict) -> int:
        fid = len(self.fills) + 1
        self.fills[fid] = {"id": fid, "challenge_id": challenge_id, "side": side,
                           "requested": requested, "admin_id": admin_id,
                           "request_id": request_id, "status": "requested", "assigned": None,
                           "shortfall": None, "reasons": [], "failure_reason": None,
                           "transaction_id": None}
        self.unit.send(next_actor, **next_kwargs, fill_id=fid)
        return fid

    def _fill(self, fill_id: int, challenge_id: str) -> Fill:
        f = self.fills.get(fill_id)
        if f is None or f["challenge_id"] != challenge_id:
            raise NotFound(f"fill {fill_id} of challenge {challenge_id} does not exist")
        return Fill(f["id"], f["challenge_id"], f["side"], f["requested"], f["status"],
                    f["admin_id"])

    def finish_fill(self, fill_id: int, status: str, *, reason: str | None = None) -> None:
        self.fills[fill_id].update(status=status, failure_reason=reason)

    def unused_personas(self, challenge_id: str) -> list[Persona]:
        used = {m["persona_id"] for m in self.matches.values()
                if m["challenge_id"] == challenge_id}
        return sorted((p for p in self.personas if p.id not in used), key=lambda p: p.id)

    def release(self, fill_id: int) -> int:
        held = [i for i, m in self.matches.items()
                if m["fill_id"] == fill_id and m["status"] == MATCH.initial]
        return sum(self.matches.pop(i)["stake"] for i in held)

    def assign_context(self, fill_id: int, challenge_id: str):
        fill = self._fill(fill_id, challenge_id)
        return (fill, self.config(challenge_id),
                self.waiting(challenge_id, fill.side, fill.requested),
                self.unused_personas(challenge_id))

    def reserve(self, fill: Fill, pairs, stake: int, cfg, shortfall: int, reasons,
                next_actor: str | None = None, next_kwargs: dict | None = None) -> None:
        for user, persona in pairs:
            if any(m["challenge_id"] == fill.challenge_id and m["persona_id"] == persona.id
                   or m["participant_id"] == user.id for m in self.matches.values()):
                raise Refused("unique violation: a persona or a user matched twice")
            mid = max(self.matches, default=0) + 1
            self.matches[mid] = {
                "id": mid, "challenge_id": fill.challenge_id, "fill_id": fill.id,
                "participant_id": user.id, "persona_id": persona.id, "persona": persona,
                "user_id": user.user_id, "user_side": fill.side, "stake": stake,
                "status": MATCH.initial, "result": None, "payout": None, "pnl": None}
        self.configs[fill.challenge_id] = cfg
        self.fills[fill.id].update(assigned=len(pairs), shortfall=shortfall, reasons=list(reasons),
                                   status="assigned" if pairs else "empty")
        if next_actor is not None:
            self.unit.send(next_actor, **(next_kwargs or {}))

    def fill_context(self, fill_id: int, challenge_id: str):
        fill = self._fill(fill_id, challenge_id)
        reserved = sorted((m for m in self.matches.values()
                           if m["fill_id"] == fill_id and m["status"] == MATCH.initial),
                          key=lambda m: m["participant_id"])
        return fill, self.config(challenge_id), [
            ReservedMatch(m["id"], m["participant_id"], m["user_id"], m["user_side"], m["persona"])
            for m in reserved]

    def activate(self, challenge_id: str, fill_id: int, matches, cfg, transaction_id: int,
                 events, resolve_keys=(), raise_items=()) -> Written:
        for m in matches:
            row = self.matches[m.match_id]
            row["status"] = MATCH.check(row["status"], "active")
            self.participants[m.participant_id]["match_id"] = m.match_id
        self.configs[challenge_id] = cfg
        self.fills[fill_id].update(status="created", failure_reason=None,
                                   transaction_id=transaction_id)
        self.unit.emit_many(events)
        return Written(self.alerts.resolve_keys(resolve_keys),
                       self.alerts.raise_items(raise_items))

    def resolve(self, challenge: Challenge, resolved_by: str, next_actor: str,
                next_kwargs: dict) -> list[int]:
        self._move(challenge.challenge_id, "resolved", result=challenge.result)
        self.unit.send(next_actor, **next_kwargs)
        return sorted(f["id"] for f in self.fills.values()
                      if f["challenge_id"] == challenge.challenge_id
                      and f["status"] in ("requested", "assigned"))

    # --- settlement
    def unsettled(self, challenge_id: str, limit: int) -> list[Seat]:
        return [Seat(p["id"], p["user_id"], p["side"], p["stake"],
                     "user" if p["paired_with"] else "treasury" if p["match_id"] else None,
                     p["match_id"])
                for p in sorted(self._of(challenge_id), key=lambda p: p["id"])
                if not p["settled"]][:limit]

    def settle_seats(self, seats, transaction_id, matches, events) -> None:
        for seat, outcome in seats:
            self.participants[seat.participant_id].update(
                outcome=outcome.outcome, payout=outcome.payout, settled=True)
        for match_id, m in matches:
            row = self.matches[match_id]
            row.update(status=MATCH.check(row["status"], m.status), result=m.result,
                       payout=m.payout, pnl=m.pnl)
        self.unit.emit_many(events)

    def close_settlement(self, challenge_id: str, escrow: str, resolve_keys) -> Closed:
        self._move(challenge_id, "settled")
        settled = [MatchSettlement(m["result"], m["payout"], m["pnl"])
                   for _, m in sorted(self.matches.items())
                   if m["challenge_id"] == challenge_id and m["status"] in MATCH_SETTLED]
        users = {"won": 0, "lost": 0, "refunded": 0}
        for p in self._of(challenge_id):
            if p["outcome"]:
                users[p["outcome"]] += 1
        return Closed(self.ledger.balance.get(escrow, 0), settled, users,
                      self.alerts.resolve_keys(resolve_keys))

    def daily_summary(self, start: datetime, end: datetime) -> dict[str, Any]:
        return {"from": start.isoformat(), "to": end.isoformat(), "currencies": {}}


class FakeUnitOfWork:
    """Parameters: actor, request_id, payload, as the real one's."""

    def __init__(self, actor: str | None = None, request_id: str | None = None,
                 payload: Any = None) -> None:
        self.actor, self.request_id, self.payload = actor, request_id, payload
        self.ledger = FakeLedger()
        self.alerts = FakeAlerts(self)
        self.buffers = FakeBuffers(self.ledger)
        self.providers = FakeProviders()
        self.conversions = FakeConversions()
        self.journal = FakeJournal()
        self.wallet_state = FakeWalletState()
        self.guard = FakeGuard(self)
        self.wallets = FakeWallets(self, self.guard)
        self.markets = FakeMarkets(self.ledger, self)
        self.challenges = FakeChallenges(self, self.ledger, self.alerts)
        self.personas = FakePersonas(self)
        self.claims: dict[tuple, str] = {}
        self.sent: list[tuple[str, int, dict[str, Any]]] = []  # published after commit
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.locks: set[tuple[int, int]] = set()
        self.commits = 0
        self._pending: list[tuple[str, tuple]] = []

    _STATE = ("ledger", "alerts", "buffers", "providers", "conversions", "journal", "markets",
              "challenges", "wallet_state", "claims")

    def __enter__(self) -> "FakeUnitOfWork":
        # One copy of the whole state (repositories share the ledger and the alerts); the
        # unit itself, which they emit through, is not copied.
        self._saved = copy.deepcopy({k: getattr(self, k) for k in self._STATE},
                                    {id(self): self})
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
