"""Changing the balance guard's limits (``set_guard_limits``), on the fake unit of work."""

from __future__ import annotations

import pytest

from domain.errors import InvalidCommand
from domain.guard import default_limits
from infra.contract import parse
from infra.contract.operations import SetGuardLimits
from infra.uow_fake import FakeUnitOfWork
from services import guard


def _cmd(**kwargs) -> SetGuardLimits:
    return parse(SetGuardLimits, {"request_id": "l", "tier": "platinum", "currency": "USD",
                                  "performed_by": "ada", **kwargs})


def test_the_limits_given_change_and_the_others_stay_as_they_were():
    uow = FakeUnitOfWork()
    stored = guard.set_guard_limits(_cmd(daily_limit=700), uow)
    table = default_limits("platinum", "USD")
    assert stored.daily == 700
    assert (stored.min_balance, stored.max_balance, stored.weekly, stored.warning,
            stored.critical) == (table.min_balance, table.max_balance, table.weekly,
                                 table.warning, table.critical)
    assert uow.guard.limits().get("platinum", "USD") == stored
    # A second change starts from the stored row, not from SPEC §4's table.
    again = guard.set_guard_limits(_cmd(weekly_limit=9_000), uow)
    assert (again.daily, again.weekly) == (700, 9_000)


def test_nothing_to_change_is_refused():
    with pytest.raises(InvalidCommand, match="nothing to change"):
        guard.set_guard_limits(_cmd(), FakeUnitOfWork())


def test_limits_that_break_the_domain_rules_are_refused_and_nothing_is_stored():
    uow = FakeUnitOfWork()
    with pytest.raises(InvalidCommand, match="critical threshold"):
        guard.set_guard_limits(_cmd(warning=1), uow)
    with pytest.raises(InvalidCommand, match="cannot be negative"):
        guard.set_guard_limits(_cmd(daily_limit=-1), uow)
    assert ("platinum", "USD") not in uow.wallet_state.limits


def test_the_schema_holds_tier_and_currency():
    with pytest.raises(InvalidCommand):
        _cmd(tier="tin", daily_limit=1)
    with pytest.raises(InvalidCommand):
        _cmd(currency="XXX", daily_limit=1)
