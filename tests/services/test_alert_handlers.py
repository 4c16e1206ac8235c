"""The alert handlers an operator uses, on the fake unit of work."""

from __future__ import annotations

import pytest

from domain.errors import InvalidCommand, NotFound, Refused
from infra.contract import parse
from infra.contract.operations import AcknowledgeAlert, ResolveAlert
from infra.uow_fake import FakeUnitOfWork
from services import alerts


def _open_one(uow: FakeUnitOfWork) -> None:
    uow.alerts.raise_(kind="conversion", severity="critical", subject="job 1 failed",
                      dedupe_key="conversion:failed:1")


def test_an_open_alert_is_acknowledged_once():
    uow = FakeUnitOfWork()
    _open_one(uow)
    ack = parse(AcknowledgeAlert, {"request_id": "a", "alert_id": 1, "acknowledged_by": "ada"})
    assert alerts.acknowledge_alert(ack, uow)["acknowledged_by"] == "ada"
    with pytest.raises(Refused, match="not open"):
        alerts.acknowledge_alert(ack, uow)


def test_resolving_by_hand_keeps_who_and_how_and_needs_a_note():
    uow = FakeUnitOfWork()
    _open_one(uow)
    doc = alerts.resolve_alert(parse(ResolveAlert, {
        "request_id": "r", "alert_id": 1, "note": " refunded ", "resolved_by": "ada"}), uow)
    assert (doc["status"], doc["resolved_by"], doc["resolution_note"]) == (
        "resolved", "ada", "refunded")
    with pytest.raises(InvalidCommand, match="--note"):
        alerts.resolve_alert(parse(ResolveAlert, {
            "request_id": "r2", "alert_id": 1, "note": " ", "resolved_by": "ada"}), uow)
    with pytest.raises(NotFound):
        alerts.resolve_alert(parse(ResolveAlert, {
            "request_id": "r3", "alert_id": 9, "note": "x", "resolved_by": "ada"}), uow)
