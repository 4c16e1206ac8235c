"""Conversion providers (SPEC §3): their health feeds selection; operators pause them.

    probe_providers       every active provider's health endpoint is asked
    set_provider_status   a provider is paused (out of selection) or resumed
"""

from __future__ import annotations

from domain.providers import ACTIVE
from infra.contract.operations import SetProviderStatus
from infra.contract.treasury import ProbeProviders
from infra.logs import get_logger
from infra.uow import UnitOfWork

log = get_logger(__name__)


def probe_providers(cmd: ProbeProviders, uow: UnitOfWork) -> dict[str, bool]:
    """Ask each active provider (outside any transaction) and store the answer; a provider
    whose fresh probe says down is left out of selection.  Returns ``{name: up}``."""
    with uow:
        clients = {r.name: uow.providers.client(r) for r in uow.providers.list()
                   if r.status == ACTIVE}
    results: dict[str, bool] = {}
    for name, client in clients.items():
        error = None
        try:
            up = bool(client.health())
            if not up:
                error = "health endpoint says down"
        except Exception as exc:  # an unreachable or broken provider is down, not our bug
            up, error = False, f"{type(exc).__name__}: {exc}"[:300]
        with uow:
            uow.providers.record_probe(name, up, error)
            uow.commit()
        results[name] = up
        if not up:
            log.warning("provider.probe_down", provider=name, error=error)
    log.info("probe_providers.done", up=sorted(n for n, ok in results.items() if ok),
             down=sorted(n for n, ok in results.items() if not ok))
    return results


def set_provider_status(cmd: SetProviderStatus, uow: UnitOfWork) -> None:
    """Pause a provider (out of selection) or resume it; the lever is audited."""
    uow.providers.update(cmd.name, status=cmd.status)
    uow.conversions.record_lever("pause_provider" if cmd.status == "paused"
                                 else "resume_provider", cmd.performed_by,
                                 data={"provider": cmd.name})
    log.info("provider.status_set", provider=cmd.name, status=cmd.status, by=cmd.performed_by)
