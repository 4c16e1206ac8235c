"""Treasury engine actors (SPEC §3): buffer flows, the settlement cycle, conversion steps."""

from __future__ import annotations

from infra.contract.treasury import (
    PollConversion,
    ProbeProviders,
    RecordBufferFlow,
    RunSettlementCycle,
    SubmitConversion,
)
from infra.contract.operations import SetAutoRebalance, SetProviderStatus
from infra.logs import get_logger
from infra.messaging import command
from infra.treasury import cycle, overrides, polling, store, submission
from infra.uow import UnitOfWork

log = get_logger(__name__)


@command()
def record_buffer_flow(cmd: RecordBufferFlow, uow: UnitOfWork) -> None:
    """An upstream service funded (or drew on) a buffer; the world is the counterpart."""
    cycle.record_flow(uow, cmd.account_type, cmd.amount, cmd.reference)


@command(max_retries=20, retry_within_ms=290_000)  # fired every 5 min
def run_settlement_cycle(cmd: RunSettlementCycle, uow: UnitOfWork) -> None:
    """One replenishment job per buffer below min with nothing in flight."""
    # Without a name, a manual cycle is recorded as asked by its request (never a made-up name).
    who = cmd.requested_by or ("scheduler" if cmd.trigger == "scheduled"
                               else f"request {cmd.request_id}")
    cycle.run_cycle(uow, cmd.trigger, requested_by=who[:200])


@command(transactional=False)
def submit_conversion(cmd: SubmitConversion) -> None:
    """Hand a pending job to the best provider, falling back on errors (own transactions:
    the provider is called outside any)."""
    status = submission.submit(cmd.job_id)
    log.info("submit_conversion.done", job_id=cmd.job_id, status=status)


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # fired every 60 s
def poll_conversion(cmd: PollConversion) -> None:
    """Let the provider's status drive one job, or every job a provider holds."""
    if cmd.job_id is None:
        polled = polling.poll_all(request_id=cmd.request_id)
        log.info("poll_conversion.done", polled=polled)
    else:
        polling.poll(cmd.job_id, poll_no=cmd.poll_no)


@command(transactional=False, max_retries=20, retry_within_ms=55_000)  # fired every 60 s
def probe_providers(cmd: ProbeProviders) -> None:
    """Probe every active provider's health endpoint; the result feeds selection."""
    results = polling.probe_all()
    log.info("probe_providers.done", up=sorted(n for n, ok in results.items() if ok),
             down=sorted(n for n, ok in results.items() if not ok))


@command()
def set_provider_status(cmd: SetProviderStatus, uow: UnitOfWork) -> None:
    """Pause a provider (out of selection) or resume it (``ballast providers pause|resume``)."""
    store.update_provider(uow.conn, cmd.name, status=cmd.status)
    overrides.record_lever(uow.conn, "pause_provider" if cmd.status == "paused"
                           else "resume_provider", cmd.performed_by, data={"provider": cmd.name})
    log.info("provider.status_set", provider=cmd.name, status=cmd.status, by=cmd.performed_by)


@command()
def set_auto_rebalance(cmd: SetAutoRebalance, uow: UnitOfWork) -> None:
    """Freeze or resume scheduled rebalancing (a manual cycle still runs when asked)."""
    cycle.set_auto_rebalance(uow, cmd.enabled, cmd.performed_by)
