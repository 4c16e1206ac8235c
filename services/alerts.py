"""Alerts an operator handles (SPEC §6).

    acknowledge_alert   an open alert is acknowledged: it stays until its condition clears
    resolve_alert       an alert no condition clears is resolved once handled
"""

from __future__ import annotations

from typing import Any

from domain.errors import InvalidCommand
from infra.contract.operations import AcknowledgeAlert, ResolveAlert
from infra.uow import UnitOfWork


def acknowledge_alert(cmd: AcknowledgeAlert, uow: UnitOfWork) -> dict[str, Any]:
    """Who acknowledged an open alert and when; no duplicate opens meanwhile.  Returns the
    alert; refused unless it is open."""
    return uow.alerts.acknowledge(cmd.alert_id, cmd.acknowledged_by)


def resolve_alert(cmd: ResolveAlert, uow: UnitOfWork) -> dict[str, Any]:
    """A one-shot alert (a failed conversion, a failed settlement) resolved by hand, with
    who and how; ``alert.resolved`` goes out.  One whose condition still holds is raised
    again by the next sweep.  Returns the alert."""
    if not cmd.note.strip():
        raise InvalidCommand("--note needs a value: how the alert was handled")
    return uow.alerts.resolve_by_hand(cmd.alert_id, cmd.resolved_by, cmd.note.strip())
