"""The shadow persona pool an operator grows (SPEC §1: the treasury stakes as personas).

    add_persona   a persona joins the pool, active, under a code not taken yet
"""

from __future__ import annotations

from typing import Any

from domain.errors import Refused
from infra.contract.operations import AddPersona
from infra.uow import UnitOfWork


def add_persona(cmd: AddPersona, uow: UnitOfWork) -> dict[str, Any]:
    """The persona added to the pool (its category and 1-64 character code and name held
    by the command's schema); refused when its code is taken.  Returns it as ``ballast
    personas`` lists it."""
    persona_id = uow.personas.add(cmd.code, cmd.display_name, cmd.category)
    if persona_id is None:
        raise Refused(f"persona {cmd.code!r} already exists")
    return {"persona_id": persona_id, "code": cmd.code, "display_name": cmd.display_name,
            "category": cmd.category, "active": True, "matches": 0}
