"""Growing the shadow persona pool (``add_persona``), on the fake unit of work."""

from __future__ import annotations

import pytest

from domain.errors import InvalidCommand, Refused
from infra.contract import parse
from infra.contract.operations import AddPersona
from infra.uow_fake import FakeUnitOfWork
from services import personas


def _cmd(**kwargs) -> AddPersona:
    return parse(AddPersona, {"request_id": "p", "code": "newcomer", "display_name": "Newcomer",
                              "category": "casual", **kwargs})


def test_a_persona_joins_the_pool_active_with_no_matches():
    uow = FakeUnitOfWork()
    doc = personas.add_persona(_cmd(), uow)
    assert doc == {"persona_id": 1, "code": "newcomer", "display_name": "Newcomer",
                   "category": "casual", "active": True, "matches": 0}
    # The pool persona assignment draws from (any challenge: it has played in none).
    assert [p.code for p in uow.challenges.unused_personas("c1")] == ["newcomer"]


def test_a_taken_code_is_refused():
    uow = FakeUnitOfWork()
    personas.add_persona(_cmd(), uow)
    with pytest.raises(Refused, match="already exists"):
        personas.add_persona(_cmd(display_name="Again"), uow)
    assert [(p.code, p.display_name) for p in uow.personas.pool] == [("newcomer", "Newcomer")]


@pytest.mark.parametrize("bad", [{"category": "whale"}, {"code": ""}, {"code": "x" * 65},
                                 {"display_name": ""}, {"display_name": "x" * 65}])
def test_the_schema_holds_the_category_and_the_lengths(bad):
    with pytest.raises(InvalidCommand):
        _cmd(**bad)
