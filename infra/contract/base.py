"""Building blocks of message schemas: every command is a strict pydantic model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, ValidationError

from domain.errors import InvalidCommand
from domain.money import MAX_AMOUNT, Currency  # noqa: F401  (re-exported for schemas)

# Every identifier has one declared type (CONTRACT.md, "Identifiers"); a value of another
# type is refused, never coerced: a user_id of 12.5 is invalid, not the user "12.5".

#: Ballast's own identifiers (users, challenges, markets, participations, cycles...) are
#: strings.  They become parts of account codes (``user:{id}:NGN``), so no colons.
Identifier = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@\-]+$")
]
#: The game's identifiers (the journal's characters and parties) are positive integers,
#: as the game gives them (64-bit).
GameId = Annotated[StrictInt, Field(gt=0, le=2**63 - 1)]
RequestId = Annotated[StrictStr, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[StrictStr, StringConstraints(max_length=200)]
LongText = Annotated[StrictStr, StringConstraints(max_length=2000)]
#: A positive amount in minor units.  StrictInt: a float or a string is refused.
Amount = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)]
SignedAmount = Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]


class Command(BaseModel):
    """Base of every message payload: unknown fields are refused, and no value is coerced
    from one type to another."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: RequestId


@dataclass(frozen=True)
class ActorSpec:
    """Where an actor lives and what it accepts.

    Parameters:
      actor: actor name (public for commands).
      queue: RabbitMQ queue name.
      schema: the pydantic model of its kwargs.
      step: True for internal step actors (kwargs not public).
    """

    actor: str
    queue: str
    schema: type[Command]
    step: bool = False


def parse(schema: type[Command], kwargs: dict[str, Any]) -> Command:
    """Validate kwargs against ``schema``; a failure is an InvalidCommand with one line."""
    try:
        return schema.model_validate(kwargs)
    except ValidationError as exc:
        raise InvalidCommand(summarize(exc)) from None


def summarize(exc: ValidationError) -> str:
    """A ValidationError as one readable line: ``field: problem; field: problem``."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ())) or "payload"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"(+{more} more)")
    return "invalid payload: " + "; ".join(parts)
