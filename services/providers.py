"""Conversion providers (SPEC §3): their health feeds selection; operators pause them.

    probe_providers       every active provider's health endpoint is asked
    set_provider_status   a provider is paused (out of selection) or resumed
    add_provider          an operator adds a provider, active
    update_provider       an operator changes a provider's priority, limits or configuration
"""

from __future__ import annotations

from typing import Any

from domain.conversions import DIRECTIONS
from domain.providers import ACTIVE
from infra.contract.operations import AddProvider, SetProviderStatus, UpdateProvider
from infra.contract.treasury import ProbeProviders
from infra.providers import checked_config
from infra.treasury.store import ProviderRow
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


def add_provider(cmd: AddProvider, uow: UnitOfWork) -> None:
    """A new provider, active, with its kind's validated configuration (both directions
    unless told); a name taken already is refused."""
    uow.providers.add(ProviderRow(
        cmd.name, cmd.kind, cmd.priority, ACTIVE, tuple(cmd.directions or sorted(DIRECTIONS)),
        cmd.min_amount, cmd.max_amount, cmd.daily_limit, checked_config(cmd.kind, cmd.config),
        0, 0))
    log.info("provider.added", provider=cmd.name, kind=cmd.kind, by=cmd.performed_by)


#: What ``update_provider`` may change, as its command names them.
UPDATABLE = ("priority", "directions", "min_amount", "max_amount", "daily_limit", "config")


def update_provider(cmd: UpdateProvider, uow: UnitOfWork) -> tuple[dict[str, Any], dict[str, Any]]:
    """Change the fields given (the configuration validated for the provider's kind).
    Returns ``(before, changed)``: the old values of the fields given, and those that
    differ, new."""
    current = uow.providers.get(cmd.name)
    fields = {k: getattr(cmd, k) for k in UPDATABLE if getattr(cmd, k) is not None}
    if "config" in fields:
        fields["config"] = checked_config(current.kind, fields["config"])
    before = {k: list(v) if isinstance(v, tuple) else v
              for k, v in ((k, getattr(current, k)) for k in fields)}
    changed = {k: v for k, v in fields.items() if before[k] != v}
    uow.providers.update(cmd.name, **fields)
    log.info("provider.updated", provider=cmd.name, changed=sorted(changed), by=cmd.performed_by)
    return before, changed
