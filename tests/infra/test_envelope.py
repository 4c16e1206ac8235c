"""The envelope check on its own (infra/contract/envelope.py): bytes in, a verdict out."""

from __future__ import annotations

import json

from hypothesis import given, strategies as st

from infra.contract.envelope import MAX_BODY_BYTES, OPTIONS, check

ACTORS = {"deposit": "ballast.wallets", "open_market": "ballast.markets"}


def body(**changes) -> dict:
    b = {"queue_name": "ballast.wallets", "actor_name": "deposit", "args": [],
         "kwargs": {"request_id": "r"}, "options": {}, "message_id": "m-1",
         "message_timestamp": 1_700_000_000_000}
    b.update(changes)
    return b


def verdict(b, queue="ballast.wallets"):
    raw = b if isinstance(b, bytes) else json.dumps(b).encode()
    return check(raw, queue, ACTORS)


def test_a_valid_envelope_passes_with_its_fields():
    v = verdict(body())
    assert v.ok and v.fields["kwargs"] == {"request_id": "r"}


def test_a_delayed_message_on_its_delay_queue_passes():
    assert verdict(body(queue_name="ballast.wallets.DQ", options={"eta": 1, "retries": 2}),
                   "ballast.wallets.DQ").ok


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(), st.booleans(), st.none(),
                 st.lists(st.integers(), max_size=3)))
def test_options_that_are_not_an_object_are_refused_with_one_line(value):
    v = verdict(body(options=value))
    assert not v.ok and "\n" not in v.reason and v.reason.startswith("invalid payload: options")


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                 st.lists(st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_non_string_names_and_ids_are_refused(value):
    for field in ("queue_name", "actor_name", "message_id"):
        v = verdict(body(**{field: value}))
        assert not v.ok and field in v.reason


@given(st.text(min_size=0, max_size=20), st.text(min_size=0, max_size=20))
def test_a_nul_anywhere_in_a_string_is_refused(before, after):
    for where in ("kwargs", "options"):
        b = body()
        if where == "kwargs":
            b["kwargs"]["reference"] = before + "\x00" + after
        else:
            b["options"]["traceback"] = before + "\x00" + after
        v = verdict(b)
        assert not v.ok and "NUL" in v.reason
    b = body()
    b["kwargs"][before + "\x00"] = 1
    assert "NUL" in verdict(b).reason


def test_only_known_options_of_their_type_pass():
    for key in OPTIONS:
        assert f"options.{key} must be" in verdict(body(options={key: ["of the wrong type"]})).reason
    assert not verdict(body(options={"throws": "ValueError"})).ok
    assert not verdict(body(options={"on_success": "withdraw"})).ok
    assert not verdict(body(options={"max_age": 1})).ok
    assert verdict(body(options={"retries": 3, "replays": 1, "last_dead_letter_reason": None})).ok


def test_the_queue_and_the_actor_must_agree_with_where_it_arrived():
    assert "not the queue it was published to" in verdict(body(queue_name="ballast.nowhere")).reason
    assert "unknown actor" in verdict(body(actor_name="nope")).reason
    assert "belongs on ballast.markets" in verdict(body(actor_name="open_market")).reason


def test_sizes_are_bounded():
    big = json.dumps(body(kwargs={"x": "a" * MAX_BODY_BYTES})).encode()
    v = check(big, "ballast.wallets", ACTORS)
    assert not v.ok and f"more than {MAX_BODY_BYTES}" in v.reason
    assert len(v.salvage["raw"]) < 20_000
    deep = b"[" * 40 + b"]" * 40
    assert "nested" in verdict(body(kwargs={"x": json.loads(deep)})).reason


@given(st.binary(max_size=200))
def test_any_bytes_get_a_verdict_and_a_valid_salvage(raw):
    v = check(raw, "ballast.wallets", ACTORS)
    s = v.salvage if not v.ok else v.fields
    assert isinstance(s["message_id"], str) and s["queue_name"] == "ballast.wallets"
    if not v.ok:
        assert isinstance(s["kwargs"], dict) and isinstance(s["options"], dict)
        json.dumps(s)  # the dead letter can always be written
