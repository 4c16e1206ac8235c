"""Alerts: the sweep of conditions no single message raises, and webhook delivery (SPEC §6)."""

from __future__ import annotations

from infra import alerts, guard
from infra.conditions import CONDITIONS, evaluate
from infra.contract.operations import (AcknowledgeAlert, DeliverAlertWebhooks, EvaluateAlerts,
                                       EvaluateBalanceAlerts, ResolveAlert)
from infra.db.engine import get_engine
from infra.messaging import command
from infra.uow import UnitOfWork
from services import alerts as handlers


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # fired every 60 s
def evaluate_alerts(cmd: EvaluateAlerts) -> None:
    """Evaluate every condition of the table (``infra.conditions.CONDITIONS``), each in its
    own unit of work: one failing condition raises ``alert_condition_failed`` and the others
    still run.  A repeated request (same scheduler slot) evaluates each condition once."""
    evaluate(CONDITIONS, request_id=cmd.request_id, payload=cmd)


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # kicked by the 60 s sweep
def deliver_alert_webhooks(cmd: DeliverAlertWebhooks) -> None:
    """POST due alert deliveries to BALLAST_ALERT_WEBHOOK_URL; failures back off and the
    alert sweep hands them to a later run."""
    alerts.deliver_pending(get_engine())


@command()
def evaluate_balance_alerts(cmd: EvaluateBalanceAlerts, uow: UnitOfWork) -> None:
    """Balance alerts of one chunk of a big wallet transaction; hands on the next chunk."""
    after = (cmd.after_user, cmd.after_currency) if cmd.after_user and cmd.after_currency else None
    last = guard.evaluate_deferred(uow, cmd.transaction_id, after)
    if last is not None:
        uow.send("evaluate_balance_alerts",
                 request_id=f"balance-alerts:{cmd.transaction_id}:{last[0]}:{last[1]}",
                 transaction_id=cmd.transaction_id, after_user=last[0], after_currency=last[1])


@command()
def acknowledge_alert(cmd: AcknowledgeAlert, uow: UnitOfWork):
    return handlers.acknowledge_alert(cmd, uow)


@command()
def resolve_alert(cmd: ResolveAlert, uow: UnitOfWork):
    return handlers.resolve_alert(cmd, uow)
