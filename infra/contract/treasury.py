"""Queue ``ballast.treasury`` and the conversion steps (CONTRACT.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator

from infra.contract.base import ActorSpec, Command, Identifier, LongText, ShortText, SignedAmount

QUEUE = "ballast.treasury"

AccountType = Literal["system_buffer_usdc", "system_buffer_fiat", "broker_operational"]


class RecordBufferFlow(Command):
    account_type: AccountType
    amount: SignedAmount
    reference: ShortText

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("a flow of zero changes nothing")
        return v


class RunSettlementCycle(Command):
    trigger: Literal["scheduled", "manual"]
    #: Who asked for a manual cycle (the console's operator); recorded on its jobs.
    requested_by: Identifier | None = None


JobId = Annotated[StrictInt, Field(gt=0)]


class SubmitConversion(Command):
    job_id: JobId


class PollConversion(Command):
    job_id: JobId | None = None  # None: poll every job a provider holds
    # The job's own polls after submission (0, 1, ...): each schedules the next with backoff.
    poll_no: Annotated[StrictInt, Field(ge=0, le=10_000)] | None = None


class ApplyConversionCallback(Command):
    """What a verified provider callback says about one order (``ballast callbacks serve``
    runs it in process; kwargs internal)."""

    job_id: JobId
    idempotency_key: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    state: Literal["not_found", "processing", "completed", "failed"]
    reference: LongText | None = None
    # As the provider said them: amounts the job cannot take are refused when applied
    # (``jobs.complete``: the provider is asked again), not here.
    destination_amount: StrictInt | None = None
    fee_amount: StrictInt | None = None
    rate_ppm: StrictInt | None = None
    detail: LongText | None = None


class ProbeProviders(Command):
    """Ask every active provider's health endpoint (the scheduler, every minute)."""


SPECS = [
    ActorSpec("record_buffer_flow", QUEUE, RecordBufferFlow),
    ActorSpec("run_settlement_cycle", QUEUE, RunSettlementCycle),
    ActorSpec("submit_conversion", "ballast.step.conversions", SubmitConversion, step=True),
    ActorSpec("poll_conversion", "ballast.step.polling", PollConversion, step=True),
    ActorSpec("probe_providers", "ballast.step.polling", ProbeProviders, step=True),
    # Added (issue 11): a verified callback applied by the path of a poll.
    ActorSpec("apply_conversion_callback", "ballast.step.polling", ApplyConversionCallback,
              step=True),
]
