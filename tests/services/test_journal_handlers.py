"""The journal handlers on the fake unit of work."""

from __future__ import annotations

import pytest

from domain.errors import Refused
from infra.contract import parse
from infra.contract.journal import CreateParticipation, PlanCycle, RegisterCharacter
from infra.uow_fake import FakeUnitOfWork
from services import journal


def test_registering_a_character_twice_changes_nothing_the_second_time():
    uow = FakeUnitOfWork()
    cmd = parse(RegisterCharacter, {"request_id": "r", "character_id": 9001, "name": "Logi",
                                    "role": "LOGISTICS"})
    with uow:
        assert journal.register_character(cmd, uow) == "created"
        assert journal.register_character(cmd, uow) == "unchanged"


def test_a_cycle_that_is_not_planned_takes_no_participation():
    uow = FakeUnitOfWork()
    with uow:
        journal.plan_cycle(parse(PlanCycle, {"request_id": "p", "cycle_id": "C1"}), uow)
        uow.journal.cycles["C1"].status = "open"
        with pytest.raises(Refused):
            journal.create_participation(parse(CreateParticipation, {
                "request_id": "x", "participation_id": "P1", "cycle_id": "C1", "user_id": "u1",
                "character_name": "Logi", "amount": 100}), uow)
    assert uow.journal.participations == {}


def test_a_repeated_claim_with_the_same_payload_takes_no_effect_and_another_conflicts():
    uow = FakeUnitOfWork(actor="plan_cycle", request_id="p", payload={"cycle_id": "C1"})
    with uow:
        assert uow.claim() and not uow.claim()
        uow.payload = {"cycle_id": "C2"}
        with pytest.raises(Exception, match="another payload"):
            uow.claim()
