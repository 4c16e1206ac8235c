"""Alerts: the sweep of conditions no single message raises, and webhook delivery (SPEC §6)."""

from __future__ import annotations

from infra import alerts, guard  # noqa: F401  (importing them registers their conditions)
from infra.conditions import CONDITIONS, evaluate
from infra.contract.operations import DeliverAlertWebhooks, EvaluateAlerts
from infra.db.engine import get_engine
from infra.messaging import command


@command(transactional=False, max_retries=0)
def evaluate_alerts(cmd: EvaluateAlerts) -> None:
    """Evaluate every registered condition, each in its own unit of work: one failing
    condition raises ``alert_condition_failed`` and the others still run.  A repeated
    request (same scheduler slot) evaluates each condition once."""
    evaluate(CONDITIONS, request_id=cmd.request_id, payload=cmd)


@command(transactional=False, max_retries=0)
def deliver_alert_webhooks(cmd: DeliverAlertWebhooks) -> None:
    """POST due alert deliveries to BALLAST_ALERT_WEBHOOK_URL; failures back off and the
    alert sweep hands them to a later run."""
    alerts.deliver_pending(get_engine())
