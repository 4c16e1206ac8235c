"""The balance guard in every wallet change (SPEC §4): limits checked before anything is
written, the post-and-record path, refusals told, the balance alerts of a big transaction.

    check                    a user-initiated change may not break its tier's limits
    post_and_record          the posting, its audit trail, events and alerts at once
    post_and_record_many     the same for several transactions of distinct wallets at once
    tell_refusal             a refusal leaves an event (and limit_exceeded) behind
    evaluate_balance_alerts  the balance alerts of one chunk of a big transaction
    set_guard_limits         an operator changes one tier's limits in one currency

``check`` runs with the wallet accounts already locked (``services.wallets.apply_changes``
locks them): two changes to one wallet are serialised by that lock, so the second one's
window sums see the first one's audit line and together they never exceed a limit.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Sequence

from domain import guard as rules
from domain.errors import InvalidCommand
from domain.guard import GuardContext, Limits, Paired
from domain.ledger import Posting
from domain.wallet import BalanceRefused
from domain import request_ids
from infra.contract.operations import EvaluateBalanceAlerts, SetGuardLimits
from infra.uow import UnitOfWork
from infra.wallets.repository import WalletPosting


def check(uow: UnitOfWork, changes: Paired, *, context: GuardContext | None = None,
          now: datetime | None = None) -> None:
    """Refuse (BalanceRefused, naming the rule and by how much) the first user-initiated
    change that breaks a rule; ``changes`` pairs each with its balance before.  System
    changes are never refused.  ``context``: what locking the wallets read (else read here;
    ``now`` defaults to the transaction's time)."""
    mine = [(c, before) for c, before in changes if c.user_initiated]
    if mine:
        rules.check(mine, context if context is not None else uow.guard.context(mine, now))


def tell_refusal(uow: UnitOfWork, refusal: BalanceRefused) -> None:
    """What a refusal leaves behind, in its own transaction (the change's rolls back): a
    ``balance.change_rejected`` event and, for a daily/weekly limit, ``limit_exceeded``."""
    data = refusal.data()
    alert = rules.refusal_alert(refusal, datetime.now(timezone.utc))
    uow.guard.tell_refusal([("balance.change_rejected", data, data["user_id"])],
                           [alert] if alert else [])


def post_and_record(uow: UnitOfWork, changes: Paired, postings: Sequence[Posting],
                    context: GuardContext, events: list[tuple[str, dict[str, Any], str | None]],
                    *, kind: str, memo: str | None = None,
                    metadata: dict[str, Any] | None = None) -> int:
    """The posting with its audit lines, events and the balance alerts it raises in one
    statement (a few wallets, their ``context`` read under the locks); the alerts it
    clears resolved after, only when one was open.  Returns the transaction id."""
    return post_and_record_many(
        uow, [WalletPosting(changes, postings, (), events, kind, memo, metadata)], context)[0]


def post_and_record_many(uow: UnitOfWork, items: Sequence[WalletPosting],
                         context: GuardContext) -> list[int]:
    """Several ledger transactions of wallet changes (their wallets distinct, locked, the
    ``context`` read under the locks) posted with their audit lines, events and the balance
    alerts they raise (decided here: each item's as it would be alone, no two items share a
    wallet) in one statement; the alerts they clear resolved after.  Returns the
    transaction ids in order."""
    now = datetime.now(timezone.utc)
    postings, resolve = [], []
    for item in items:
        raised, clears = rules.alert_decisions(context, rules.wallet_moves(item.changes), None, now)
        postings.append(replace(item, raised=raised))
        resolve += clears
    txn_ids = uow.wallets.post_and_record_many(postings, context.tiers)
    uow.guard.resolve_open(context, resolve)
    return txn_ids


def evaluate_balance_alerts(cmd: EvaluateBalanceAlerts, uow: UnitOfWork) -> None:
    """Balance alerts of one chunk of a big wallet transaction; hands on the next chunk."""
    after = (cmd.after_user, cmd.after_currency) if cmd.after_user and cmd.after_currency else None
    last = uow.guard.alerts_of_chunk(cmd.transaction_id, after)
    if last is not None:
        uow.send("evaluate_balance_alerts",
                 request_id=request_ids.next_step("balance-alerts", cmd.transaction_id, last[0], last[1]),
                 transaction_id=cmd.transaction_id, after_user=last[0], after_currency=last[1])


#: The command's fields -> ``domain.guard.Limits``' (``guard_limits``' column names).
LIMIT_FIELDS = {"min_balance": "min_balance", "max_balance": "max_balance",
                "daily_limit": "daily", "weekly_limit": "weekly", "warning": "warning",
                "critical": "critical"}


def set_guard_limits(cmd: SetGuardLimits, uow: UnitOfWork) -> Limits:
    """The tier's limits in the currency with the given ones changed (the others as they
    are, SPEC §4's table until first set); they apply to the next change.  Refused when
    nothing changes or the result breaks ``domain.guard.Limits``' rules.  Returns them."""
    changes = {field: getattr(cmd, name) for name, field in LIMIT_FIELDS.items()
               if getattr(cmd, name) is not None}
    if not changes:
        raise InvalidCommand("nothing to change: give at least one of min_balance, "
                             "max_balance, daily_limit, weekly_limit, warning, critical")
    current = uow.guard.limits().get(cmd.tier, cmd.currency)
    return uow.guard.set_limits(replace(current, **changes), by=cmd.performed_by)
