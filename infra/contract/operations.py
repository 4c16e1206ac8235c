"""Operational steps: the alert sweep and the outbox sweeper."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt

from infra.contract.base import ActorSpec, Command, Currency, Identifier


class EvaluateAlerts(Command):
    pass


class SweepOutbox(Command):
    pass


class DeliverAlertWebhooks(Command):
    pass


class PruneRetention(Command):
    pass


class EvaluateBalanceAlerts(Command):
    """The balance alerts of a big wallet transaction, one chunk of wallets per message."""

    transaction_id: Annotated[StrictInt, Field(gt=0)]
    after_user: Identifier | None = None
    after_currency: Currency | None = None


class SendDailySummary(Command):
    #: The day to report (in BALLAST_TIMEZONE); the scheduler passes the previous day.
    day: date | None = None


SPECS = [
    ActorSpec("evaluate_alerts", "ballast.step.alerts", EvaluateAlerts, step=True),
    # Not in CONTRACT.md's list: internal, added (never renamed) for SPEC §7's outbox sweep.
    ActorSpec("sweep_outbox", "ballast.step.outbox", SweepOutbox, step=True),
    # Internal (issue 17): retention of published outbox rows and remembered request ids.
    ActorSpec("prune_retention", "ballast.step.outbox", PruneRetention, step=True),
    ActorSpec("send_daily_summary", "ballast.step.reports", SendDailySummary, step=True),
    # Internal (SPEC §6): alert webhooks POSTed on their own queue, off the raising step.
    ActorSpec("deliver_alert_webhooks", "ballast.step.webhooks", DeliverAlertWebhooks, step=True),
    # Internal (SPEC §4): balance alerts of a bulk settlement, off the settling step.
    ActorSpec("evaluate_balance_alerts", "ballast.step.alerts", EvaluateBalanceAlerts, step=True),
]


# Operator commands (public): what `ballast alerts ack` and `ballast providers pause|resume`
# do in-process, as messages, so the console (and any app) acts through the contract.
OPERATIONS_QUEUE = "ballast.operations"
AlertId = Annotated[StrictInt, Field(gt=0)]


class AcknowledgeAlert(Command):
    alert_id: AlertId
    acknowledged_by: Identifier


class SetProviderStatus(Command):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    status: Literal["active", "paused"]
    performed_by: Identifier


class SetAutoRebalance(Command):
    """Freeze (False) or resume (True) scheduled rebalancing (``ballast buffers pause|resume``)."""

    enabled: StrictBool
    performed_by: Identifier


SPECS += [
    ActorSpec("acknowledge_alert", OPERATIONS_QUEUE, AcknowledgeAlert),
    ActorSpec("set_provider_status", OPERATIONS_QUEUE, SetProviderStatus),
    ActorSpec("set_auto_rebalance", OPERATIONS_QUEUE, SetAutoRebalance),
]
