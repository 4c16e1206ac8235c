"""The journal queue's payloads are validated before anything is touched (CONTRACT.md)."""

from __future__ import annotations

import pytest

from domain.errors import InvalidCommand
from infra.contract import parse, spec_for

ENTRY = {"journal_id": "9001", "character_id": 42, "date": "2024-06-01T10:00:00+00:00",
         "ref_type": "player_donation", "amount": 150_000, "reason": "ARB c1 Alice",
         "first_party_id": 7, "second_party_id": 42}


def imported(**changes):
    return parse(spec_for("import_wallet_journal").schema,
                 {"request_id": "r", "entries": [{**ENTRY, **changes}]})


def test_character_and_party_ids_are_the_games_integers_and_journal_ids_strings():
    entry = imported().entries[0]
    assert (entry.journal_id, entry.character_id, entry.first_party_id) == ("9001", 42, 7)


@pytest.mark.parametrize("changes, field", [
    ({"character_id": "42"}, "character_id"),  # never coerced, either way
    ({"first_party_id": 7.0}, "first_party_id"),
    ({"second_party_id": True}, "second_party_id"),
    ({"character_id": 0}, "character_id"),
    ({"journal_id": 9001}, "journal_id"),
])
def test_an_id_of_another_type_is_refused_not_coerced(changes, field):
    with pytest.raises(InvalidCommand, match=field):
        imported(**changes)


@pytest.mark.parametrize("changes, field", [
    ({"amount": 1500.0}, "amount"),
    ({"amount": "1500"}, "amount"),
    ({"date": "2024-06-01T10:00:00"}, "date"),  # no offset
    ({"colour": "blue"}, "colour"),
    ({"reason": "x" * 201}, "reason"),
    ({"journal_id": "a b"}, "journal_id"),
])
def test_malformed_entries_are_refused_with_the_field_named(changes, field):
    with pytest.raises(InvalidCommand, match=field):
        imported(**changes)


def test_a_batch_holds_one_to_five_thousand_entries():
    schema = spec_for("import_wallet_journal").schema
    with pytest.raises(InvalidCommand):
        parse(schema, {"request_id": "r", "entries": []})
    with pytest.raises(InvalidCommand):
        parse(schema, {"request_id": "r", "entries": [ENTRY] * 5001})


def test_character_names_lose_outer_whitespace_and_pledges_are_positive_integers():
    schema = spec_for("create_participation").schema
    base = {"request_id": "r", "participation_id": "p1", "cycle_id": "c1", "user_id": "u1",
            "character_name": "  Alice Smith ", "amount": 100}
    assert parse(schema, base).character_name == "Alice Smith"
    for amount in (0, -5, 1.5):
        with pytest.raises(InvalidCommand, match="amount"):
            parse(schema, {**base, "amount": amount})
    with pytest.raises(InvalidCommand, match="character_name"):
        parse(schema, {**base, "character_name": "   "})


def test_roles_are_user_or_logistics():
    schema = spec_for("register_character").schema
    with pytest.raises(InvalidCommand, match="role"):
        parse(schema, {"request_id": "r", "character_id": 1, "name": "X", "role": "ADMIN"})


def test_the_matching_step_runs_over_every_cycle_unless_told_one():
    spec = spec_for("match_payments")
    assert spec.queue == "ballast.step.matching"
    assert parse(spec.schema, {"request_id": "schedule:payment_matching:1"}).cycle_id is None
    assert parse(spec.schema, {"request_id": "r", "cycle_id": "c1"}).cycle_id == "c1"
