"""Treasury engine actors (SPEC §3): buffer flows, the settlement cycle, conversion steps."""

from __future__ import annotations

from infra.contract.operations import SetAutoRebalance, SetProviderStatus
from infra.contract.treasury import PollConversion, RecordBufferFlow, RunSettlementCycle, SubmitConversion
from infra.logs import get_logger
from infra.messaging import command
from infra.treasury import cycle, polling, store, submission
from infra.uow import UnitOfWork

log = get_logger(__name__)


@command()
def record_buffer_flow(cmd: RecordBufferFlow, uow: UnitOfWork) -> None:
    """An upstream service funded (or drew on) a buffer; the world is the counterpart."""
    cycle.record_flow(uow, cmd.account_type, cmd.amount, cmd.reference)


@command()
def run_settlement_cycle(cmd: RunSettlementCycle, uow: UnitOfWork) -> None:
    """One replenishment job per buffer below min with nothing in flight."""
    cycle.run_cycle(uow, cmd.trigger, requested_by=cmd.requested_by or (
        "scheduler" if cmd.trigger == "scheduled" else "operator"))


@command(transactional=False)
def submit_conversion(cmd: SubmitConversion) -> None:
    """Hand a pending job to the best provider, falling back on errors (own transactions:
    the provider is called outside any)."""
    status = submission.submit(cmd.job_id)
    log.info("submit_conversion.done", job_id=cmd.job_id, status=status)


@command(transactional=False)
def poll_conversion(cmd: PollConversion) -> None:
    """Let the provider's status drive one job, or every job a provider holds."""
    if cmd.job_id is None:
        polled = polling.poll_all(request_id=cmd.request_id)
        log.info("poll_conversion.done", polled=polled)
    else:
        polling.poll(cmd.job_id)


@command()
def set_provider_status(cmd: SetProviderStatus, uow: UnitOfWork) -> None:
    """Pause a provider (out of selection) or resume it (``ballast providers pause|resume``)."""
    store.update_provider(uow.conn, cmd.name, status=cmd.status)
    log.info("provider.status_set", provider=cmd.name, status=cmd.status, by=cmd.performed_by)


@command()
def set_auto_rebalance(cmd: SetAutoRebalance, uow: UnitOfWork) -> None:
    """Freeze or resume scheduled rebalancing (a manual cycle still runs when asked)."""
    cycle.set_auto_rebalance(uow, cmd.enabled, cmd.performed_by)
