"""The treasury's operator levers on the fake unit of work: thresholds, providers added
and changed, rebalancing paused (no database, no broker)."""

from __future__ import annotations

import pytest

from domain.buffers import Thresholds
from domain.errors import InvalidCommand, NotFound, Refused
from infra.contract import parse
from infra.contract.operations import (AddProvider, SetAutoRebalance, SetBufferThresholds,
                                       UpdateProvider)
from infra.uow_fake import FakeUnitOfWork
from services import buffers, providers

FIAT = "system_buffer_fiat"


def _thresholds(**given) -> SetBufferThresholds:
    return parse(SetBufferThresholds, {"request_id": "t", "account_type": FIAT,
                                       "performed_by": "ops", **given})


def test_thresholds_not_given_stay_and_the_lever_is_audited():
    uow = FakeUnitOfWork()
    uow.buffers.thresholds[FIAT] = Thresholds(1_000, 2_000, 3_000, 100)
    with uow:
        before, new = buffers.set_buffer_thresholds(_thresholds(min_amount=1_500), uow)
        uow.commit()
    assert before.thresholds == Thresholds(1_000, 2_000, 3_000, 100)
    assert new == uow.buffers.thresholds[FIAT] == Thresholds(1_500, 2_000, 3_000, 100)
    assert uow.conversions.levers == [{"action": "set_thresholds", "by": "ops", "data": {
        "account_type": FIAT, "min": 1_500, "target": 2_000, "max": 3_000, "batch": 100}}]


def test_thresholds_out_of_order_are_refused_and_change_nothing():
    uow = FakeUnitOfWork()
    uow.buffers.thresholds[FIAT] = Thresholds(1_000, 2_000, 3_000, 100)
    with pytest.raises(InvalidCommand, match="min < target < max"), uow:
        buffers.set_buffer_thresholds(_thresholds(min_amount=2_500), uow)
    assert uow.buffers.thresholds[FIAT] == Thresholds(1_000, 2_000, 3_000, 100)
    assert uow.conversions.levers == []


def test_a_negative_threshold_is_refused_by_the_contract():
    with pytest.raises(InvalidCommand, match="min_amount"):
        _thresholds(min_amount=-1)


def test_pausing_rebalancing_is_audited():
    uow = FakeUnitOfWork()
    with uow:
        buffers.set_auto_rebalance(parse(SetAutoRebalance, {
            "request_id": "p", "enabled": False, "performed_by": "ops"}), uow)
        uow.commit()
    assert uow.buffers.settings["auto_rebalance"] is False
    assert uow.conversions.levers == [{"action": "pause_rebalancing", "by": "ops"}]


def _add(**given) -> AddProvider:
    return parse(AddProvider, {"request_id": "a", "name": "sim", "kind": "simulated",
                               "priority": 1, "performed_by": "ops", **given})


def test_an_added_provider_is_active_in_both_directions_with_a_checked_config():
    uow = FakeUnitOfWork()
    with uow:
        providers.add_provider(_add(config={"rate_ppm": 999_000, "fee_bps": 25}), uow)
        uow.commit()
    row = uow.providers.rows["sim"]
    assert (row.status, row.directions) == ("active", ("USD->USDC", "USDC->USD"))
    assert row.config == {"rate_ppm": 999_000, "fee_bps": 25, "latency_polls": 1,
                          "fail_mode": "none"}


@pytest.mark.parametrize("config, match", [({"colour": "red"}, "unknown or missing keys"),
                                           ({"fee_bps": 10_000}, "fee bps")])
def test_a_provider_config_its_kind_does_not_accept_is_refused(config, match):
    uow = FakeUnitOfWork()
    with pytest.raises(InvalidCommand, match=match), uow:
        providers.add_provider(_add(config=config), uow)
    assert uow.providers.rows == {}


def test_a_provider_name_taken_already_is_refused():
    uow = FakeUnitOfWork()
    with uow:
        providers.add_provider(_add(), uow)
        uow.commit()
    with pytest.raises(Refused, match="exists already"), uow:
        providers.add_provider(_add(priority=2), uow)
    assert uow.providers.rows["sim"].priority == 1


def test_updating_a_provider_returns_what_it_was_and_what_changed():
    uow = FakeUnitOfWork()
    with uow:
        providers.add_provider(_add(), uow)
        before, changed = providers.update_provider(parse(UpdateProvider, {
            "request_id": "u", "name": "sim", "priority": 2, "directions": ["USD->USDC"],
            "min_amount": 0, "performed_by": "ops"}), uow)
        uow.commit()
    assert before == {"priority": 1, "directions": ["USD->USDC", "USDC->USD"], "min_amount": 0}
    assert changed == {"priority": 2, "directions": ["USD->USDC"]}
    assert uow.providers.rows["sim"].directions == ("USD->USDC",)


def test_updating_an_unknown_provider_is_refused():
    uow = FakeUnitOfWork()
    with pytest.raises(NotFound), uow:
        providers.update_provider(parse(UpdateProvider, {
            "request_id": "u", "name": "nobody", "priority": 2, "performed_by": "ops"}), uow)
