"""The treasury handlers on the fake unit of work: no database, no broker."""

from __future__ import annotations

import pytest

from domain.buffers import Thresholds
from domain.errors import InsufficientFunds
from infra.contract import parse
from infra.contract.operations import SetAutoRebalance, SetProviderStatus
from infra.contract.treasury import RecordBufferFlow, RunSettlementCycle
from infra.treasury.store import ProviderRow
from infra.uow_fake import FakeUnitOfWork
from services import buffers, providers


def _flow(amount: int) -> RecordBufferFlow:
    return parse(RecordBufferFlow, {"request_id": "r1", "account_type": "system_buffer_fiat",
                                    "amount": amount, "reference": "wire 1"})


def test_a_funding_flow_credits_the_buffer_against_the_world():
    uow = FakeUnitOfWork()
    with uow:
        buffers.record_buffer_flow(_flow(5_000), uow)
        uow.commit()
    assert uow.ledger.balance["buffer:system_buffer_fiat"] == 5_000
    assert uow.ledger.balance["world:USD"] == -5_000


def test_a_withdrawal_larger_than_the_buffer_is_refused_and_leaves_nothing():
    uow = FakeUnitOfWork()
    with pytest.raises(InsufficientFunds), uow:
        buffers.record_buffer_flow(_flow(-1), uow)
    assert uow.ledger.balance == {}


def test_a_scheduled_cycle_does_nothing_while_auto_rebalancing_is_paused():
    uow = FakeUnitOfWork()
    uow.buffers.thresholds["system_buffer_fiat"] = Thresholds(1_000, 2_000, 3_000, 100)
    with uow:
        buffers.set_auto_rebalance(parse(SetAutoRebalance, {
            "request_id": "p", "enabled": False, "performed_by": "ops"}), uow)
        created = buffers.run_settlement_cycle(parse(RunSettlementCycle, {
            "request_id": "c", "trigger": "scheduled"}), uow)
        uow.commit()
    assert created == [] and uow.alerts.open == {}


def test_a_manual_cycle_alerts_a_critically_low_buffer_it_cannot_fill():
    uow = FakeUnitOfWork()
    for t in ("system_buffer_fiat", "system_buffer_usdc", "broker_operational"):
        uow.buffers.thresholds[t] = Thresholds(1_000, 2_000, 3_000, 100)
    with uow:
        buffers.run_settlement_cycle(parse(RunSettlementCycle, {
            "request_id": "c", "trigger": "manual", "requested_by": "ops"}), uow)
        uow.commit()
    assert "buffer:critical_low:system_buffer_fiat" in uow.alerts.open


def test_pausing_a_provider_takes_it_out_and_is_audited():
    uow = FakeUnitOfWork()
    uow.providers.rows["sim"] = ProviderRow("sim", "simulated", 1, "active", ("USD->USDC",),
                                            0, None, None, {}, 0, 0)
    with uow:
        providers.set_provider_status(parse(SetProviderStatus, {
            "request_id": "s", "name": "sim", "status": "paused", "performed_by": "ops"}), uow)
        uow.commit()
    assert uow.providers.rows["sim"].status == "paused"
    assert uow.conversions.levers == [{"action": "pause_provider", "by": "ops",
                                       "data": {"provider": "sim"}}]


@pytest.mark.parametrize("given, by, expected", [
    (None, None, "request c"), ("ops", None, "ops"), ("ops", "Jane Doe (ops)", "Jane Doe (ops)"),
    (None, "x" * 128, "x" * 128)])
def test_who_asked_for_a_cycle(given, by, expected):
    """The in-process caller's name (the CLI's --by, not bound to the identifier rule) wins
    over the message's; without either a manual cycle is the request's."""
    cmd = parse(RunSettlementCycle, {"request_id": "c", "trigger": "manual",
                                     **({"requested_by": given} if given else {})})
    assert buffers.requester(cmd, by) == expected
