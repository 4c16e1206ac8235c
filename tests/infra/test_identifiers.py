"""Every identifier has one declared type (CONTRACT.md, "Identifiers"); a value of another
type is refused as invalid, never coerced (issue 14, "Bad input and identifiers")."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from pydantic import BaseModel, ValidationError

from domain.errors import InvalidCommand
from infra.contract import ACTORS, parse, spec_for
from infra.contract.journal import JournalEntry
from infra.contract.markets import MarketOption

#: The game's ids are integers; every other public ``*_id`` is a string.
GAME_IDS = {"character_id", "first_party_id", "second_party_id"}
#: Internal step ids (rows of Ballast's own tables) are integers too.
ROW_IDS = {"fill_id", "job_id", "transaction_id", "distribution_id", "alert_id"}


def id_fields() -> list[tuple[type[BaseModel], str]]:
    models = {spec.schema for spec in ACTORS.values()} | {JournalEntry, MarketOption}
    return sorted(((m, f) for m in models for f in m.model_fields
                   if f.endswith("_id") and f != "request_id"),
                  key=lambda mf: (mf[0].__name__, mf[1]))


def field_errors(model: type[BaseModel], field: str, value) -> list[dict]:
    try:
        model.model_validate({field: value})
    except ValidationError as exc:
        return [e for e in exc.errors() if e["loc"] == (field,)]
    return []


def wrong_values(field: str):
    if field in GAME_IDS | ROW_IDS:
        return st.one_of(st.text(alphabet="0123456789", min_size=1, max_size=6),
                         st.floats(allow_nan=False), st.booleans())
    return st.one_of(st.integers(min_value=1), st.floats(allow_nan=False, allow_infinity=False),
                     st.booleans())


@pytest.mark.parametrize("model, field", id_fields(), ids=lambda x: getattr(x, "__name__", x))
@given(data=st.data())
def test_an_identifier_of_another_type_is_refused(model, field, data):
    value = data.draw(wrong_values(field))
    assert field_errors(model, field, value), f"{model.__name__}.{field} accepted {value!r}"


@pytest.mark.parametrize("model, field", id_fields(), ids=lambda x: getattr(x, "__name__", x))
def test_an_identifier_of_its_declared_type_is_kept_as_it_is(model, field):
    value = 42 if field in GAME_IDS | ROW_IDS else "u-42"
    assert not field_errors(model, field, value)


def test_a_fractional_user_id_is_invalid_not_the_user_12_5():
    kwargs = {"request_id": "r", "user_id": 12.5, "currency": "NGN", "amount": 100,
              "reference": "bank"}
    with pytest.raises(InvalidCommand, match="user_id"):
        parse(spec_for("deposit").schema, kwargs)
    with pytest.raises(InvalidCommand, match="user_id"):
        parse(spec_for("deposit").schema, {**kwargs, "user_id": 12})
    assert parse(spec_for("deposit").schema, {**kwargs, "user_id": "12"}).user_id == "12"


def test_free_text_is_not_coerced_either():
    kwargs = {"request_id": "r", "user_id": "u", "currency": "NGN", "amount": 100, "reference": 12345}
    with pytest.raises(InvalidCommand, match="reference"):
        parse(spec_for("deposit").schema, kwargs)
