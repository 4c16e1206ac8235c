"""Treasury engine actors (SPEC §3): adapters of the handlers in ``services/buffers.py``,
``services/conversions.py``, ``services/providers.py`` and ``services/overrides.py``."""

from __future__ import annotations

from infra.contract.operations import (AddProvider, CancelConversion, CompleteConversion,
                                       ConvertManually, FailConversion, FreezeConversions,
                                       ReportCustody, SetAutoRebalance, SetBufferThresholds,
                                       SetProviderStatus, ThawConversions, UpdateProvider)
from infra.contract.treasury import (
    ApplyConversionCallback,
    PollConversion,
    ProbeProviders,
    RecordBufferFlow,
    RunSettlementCycle,
    SubmitConversion,
)
from infra.messaging import command
from infra.uow import UnitOfWork
from services import buffers, conversions, overrides, providers


@command()
def record_buffer_flow(cmd: RecordBufferFlow, uow: UnitOfWork):
    return buffers.record_buffer_flow(cmd, uow)


@command(max_retries=20, retry_within_ms=290_000)  # fired every 5 min
def run_settlement_cycle(cmd: RunSettlementCycle, uow: UnitOfWork, requested_by: str | None = None):
    return buffers.run_settlement_cycle(cmd, uow, requested_by)


@command(transactional=False)  # own transactions: the provider is called outside any
def submit_conversion(cmd: SubmitConversion, uow: UnitOfWork):
    return conversions.submit_conversion(cmd, uow)


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # fired every 60 s
def poll_conversion(cmd: PollConversion, uow: UnitOfWork):
    return conversions.poll_conversion(cmd, uow)


@command(transactional=False)  # under the job's lock, as a poll
def apply_conversion_callback(cmd: ApplyConversionCallback, uow: UnitOfWork):
    return conversions.apply_conversion_callback(cmd, uow)


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # fired every 60 s
def probe_providers(cmd: ProbeProviders, uow: UnitOfWork):
    return providers.probe_providers(cmd, uow)


@command()
def set_provider_status(cmd: SetProviderStatus, uow: UnitOfWork):
    return providers.set_provider_status(cmd, uow)


@command()
def set_auto_rebalance(cmd: SetAutoRebalance, uow: UnitOfWork):
    return buffers.set_auto_rebalance(cmd, uow)


@command()
def set_buffer_thresholds(cmd: SetBufferThresholds, uow: UnitOfWork):
    return buffers.set_buffer_thresholds(cmd, uow)


@command()
def add_provider(cmd: AddProvider, uow: UnitOfWork):
    return providers.add_provider(cmd, uow)


@command()
def update_provider(cmd: UpdateProvider, uow: UnitOfWork):
    return providers.update_provider(cmd, uow)


@command()
def report_custody(cmd: ReportCustody, uow: UnitOfWork):
    return buffers.report_custody(cmd, uow)


@command()
def convert_manually(cmd: ConvertManually, uow: UnitOfWork):
    return overrides.convert_manually(cmd, uow)


@command()
def freeze_conversions(cmd: FreezeConversions, uow: UnitOfWork):
    return overrides.freeze_conversions(cmd, uow)


@command()
def thaw_conversions(cmd: ThawConversions, uow: UnitOfWork):
    return overrides.thaw_conversions(cmd, uow)


# The levers on one job claim and commit under the job's advisory lock (their own
# transaction): a worker submitting or polling the job finishes first.
@command(transactional=False)
def cancel_conversion(cmd: CancelConversion, uow: UnitOfWork):
    return overrides.cancel_conversion(cmd, uow)


@command(transactional=False)
def complete_conversion(cmd: CompleteConversion, uow: UnitOfWork):
    return overrides.complete_conversion(cmd, uow)


@command(transactional=False)
def fail_conversion(cmd: FailConversion, uow: UnitOfWork):
    return overrides.fail_conversion(cmd, uow)
