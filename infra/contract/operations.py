"""Operational steps: the alert sweep and the outbox sweeper."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr

from infra.contract.base import (MAX_AMOUNT, ActorSpec, Amount, Command, Currency, Identifier,
                                 LongText, ShortText)
from infra.contract.treasury import AccountType, JobId


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


ProviderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class ResolveAlert(Command):
    """An operator resolves an alert no condition clears, once handled (``alerts resolve``)."""

    alert_id: AlertId
    note: LongText
    resolved_by: Identifier


class SetProviderStatus(Command):
    name: ProviderName
    status: Literal["active", "paused"]
    performed_by: Identifier


class SetAutoRebalance(Command):
    """Freeze (False) or resume (True) scheduled rebalancing (``ballast buffers pause|resume``)."""

    enabled: StrictBool
    performed_by: Identifier


#: Minor units of a buffer's currency, or USD cents at par for a provider's limits.
MinorUnits = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]
Direction = Literal["USD->USDC", "USDC->USD"]
#: A provider's configuration document (``infra.providers.checked_config`` validates it).
ProviderConfig = dict[StrictStr, StrictInt | StrictStr]
Priority = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]  # lower wins


class SetBufferThresholds(Command):
    """Change some of a buffer's thresholds (``ballast buffers set``); those not given stay."""

    account_type: AccountType
    min_amount: MinorUnits | None = None
    target_amount: MinorUnits | None = None
    max_amount: MinorUnits | None = None
    batch_amount: MinorUnits | None = None
    performed_by: Identifier


class AddProvider(Command):
    """Add a conversion provider (``ballast providers add``), active."""

    name: ProviderName
    kind: Literal["simulated", "http"]
    priority: Priority
    directions: Annotated[list[Direction], Field(min_length=1, max_length=2)] | None = None
    min_amount: MinorUnits = 0
    max_amount: MinorUnits | None = None
    daily_limit: MinorUnits | None = None
    config: ProviderConfig = {}
    performed_by: Identifier


class UpdateProvider(Command):
    """Change some of a provider's priority, limits or configuration (``ballast providers
    set``); ``config`` replaces the whole document."""

    name: ProviderName
    priority: Priority | None = None
    directions: Annotated[list[Direction], Field(min_length=1, max_length=2)] | None = None
    min_amount: MinorUnits | None = None
    max_amount: MinorUnits | None = None
    daily_limit: MinorUnits | None = None
    config: ProviderConfig | None = None
    performed_by: Identifier


SPECS += [
    ActorSpec("acknowledge_alert", OPERATIONS_QUEUE, AcknowledgeAlert),
    ActorSpec("resolve_alert", OPERATIONS_QUEUE, ResolveAlert),  # added, issue 11
    ActorSpec("set_provider_status", OPERATIONS_QUEUE, SetProviderStatus),
    ActorSpec("set_auto_rebalance", OPERATIONS_QUEUE, SetAutoRebalance),
    # Added (issue 11): the CLI's remaining treasury levers, as commands.
    ActorSpec("set_buffer_thresholds", OPERATIONS_QUEUE, SetBufferThresholds),
    ActorSpec("add_provider", OPERATIONS_QUEUE, AddProvider),
    ActorSpec("update_provider", OPERATIONS_QUEUE, UpdateProvider),
]


# The emergency levers on conversions (SPEC §3), and the custodian stand-in (added, issue 11).

class ConvertManually(Command):
    """An operator's conversion between two buffers (``ballast conversions convert``)."""

    source_type: AccountType
    destination_type: AccountType
    amount: Amount
    performed_by: Identifier


class CancelConversion(Command):
    """Stop a job; ``force`` when a provider may still hold it (``conversions cancel``)."""

    job_id: JobId
    reason: LongText
    force: StrictBool = False
    performed_by: Identifier


class FreezeConversions(Command):
    """No new job, nothing submitted; held jobs still polled (``conversions freeze``)."""

    reason: LongText
    performed_by: Identifier


class ThawConversions(Command):
    """Lift the freeze; pending jobs go to submission again (``conversions thaw``)."""

    performed_by: Identifier


class CompleteConversion(Command):
    """End a stuck job as its provider's completion would (``conversions complete``)."""

    job_id: JobId
    reason: LongText
    evidence: ShortText
    destination_amount: Amount
    fee_amount: Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]
    performed_by: Identifier


class FailConversion(Command):
    """End a stuck job as its provider's failure would (``conversions fail``)."""

    job_id: JobId
    reason: LongText
    evidence: ShortText
    performed_by: Identifier


class ReportCustody(Command):
    """What the custodian holds for a buffer now (``treasury custody report``)."""

    account_type: AccountType
    balance: Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
    performed_by: Identifier


SPECS += [
    ActorSpec("convert_manually", OPERATIONS_QUEUE, ConvertManually),
    ActorSpec("cancel_conversion", OPERATIONS_QUEUE, CancelConversion),
    ActorSpec("freeze_conversions", OPERATIONS_QUEUE, FreezeConversions),
    ActorSpec("thaw_conversions", OPERATIONS_QUEUE, ThawConversions),
    ActorSpec("complete_conversion", OPERATIONS_QUEUE, CompleteConversion),
    ActorSpec("fail_conversion", OPERATIONS_QUEUE, FailConversion),
    ActorSpec("report_custody", OPERATIONS_QUEUE, ReportCustody),
]
