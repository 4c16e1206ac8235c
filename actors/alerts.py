"""Alerts: the sweep of conditions no single message raises, and webhook delivery (SPEC §6);
the balance guard's alerts and limits (SPEC §4)."""

from __future__ import annotations

from infra import alerts
from services.conditions import CONDITIONS, evaluate
from infra.contract.operations import (AcknowledgeAlert, DeliverAlertWebhooks, EvaluateAlerts,
                                       EvaluateBalanceAlerts, ResolveAlert, SetGuardLimits)
from infra.db.engine import get_engine
from infra.messaging import command
from infra.uow import UnitOfWork
from services import alerts as handlers
from services import guard


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # fired every 60 s
def evaluate_alerts(cmd: EvaluateAlerts) -> None:
    """Evaluate every condition of the table (``services.conditions.CONDITIONS``), each in its
    own unit of work: one failing condition raises ``alert_condition_failed`` and the others
    still run.  A repeated request (same scheduler slot) evaluates each condition once."""
    evaluate(CONDITIONS, request_id=cmd.request_id, payload=cmd)


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # kicked by the 60 s sweep
def deliver_alert_webhooks(cmd: DeliverAlertWebhooks) -> None:
    """POST due alert deliveries to BALLAST_ALERT_WEBHOOK_URL; failures back off and the
    alert sweep hands them to a later run."""
    alerts.deliver_pending(get_engine())


@command()
def evaluate_balance_alerts(cmd: EvaluateBalanceAlerts, uow: UnitOfWork):
    return guard.evaluate_balance_alerts(cmd, uow)


@command()
def acknowledge_alert(cmd: AcknowledgeAlert, uow: UnitOfWork):
    return handlers.acknowledge_alert(cmd, uow)


@command()
def resolve_alert(cmd: ResolveAlert, uow: UnitOfWork):
    return handlers.resolve_alert(cmd, uow)


@command()
def set_guard_limits(cmd: SetGuardLimits, uow: UnitOfWork):
    return guard.set_guard_limits(cmd, uow)
