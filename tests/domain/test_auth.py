"""The policy table, freshness and identity rules of signed commands (domain/auth.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.auth import (IDENTITY_FIELDS, POLICY, ROLES, KeyRecord, Limits, canonical_bytes,
                         check_fresh, check_key, check_may_send, parse_auth, policy_table, roles_for)
from domain.errors import BallastError, Unauthorized

LIMITS = Limits(window_ms=86_400_000, skew_ms=60_000)
NOW = 1_767_225_600_000


def rule_of(fn, *args) -> str:
    with pytest.raises(Unauthorized) as refused:
        fn(*args)
    return refused.value.rule


def key(**overrides) -> KeyRecord:
    fields = dict(producer="app", roles=("funding",), key_id="k_1", valid_from_ms=NOW - 1000,
                  valid_until_ms=None, key_revoked=False, producer_revoked=False)
    return KeyRecord(**{**fields, **overrides})


def test_an_unauthorized_command_is_a_permanent_error_naming_its_rule():
    error = Unauthorized("too_old", "signed 2 days ago")
    assert isinstance(error, BallastError) and error.code == "unauthorized"
    assert str(error) == "unauthorized by rule too_old: signed 2 days ago"


def test_each_role_sends_only_its_actors():
    assert roles_for("deposit", {}) == ["funding"]
    assert roles_for("join_challenge", {}) == ["wagering"]
    assert roles_for("import_wallet_journal", {}) == ["journal"]
    assert roles_for("fund_treasury", {}) == ["operator"]
    assert roles_for("settle_market", {}) == ["ballast"]
    assert roles_for("evaluate_alerts", {}) == ["operator", "ballast"]


def test_an_actor_in_no_table_accepts_only_ballast():
    assert roles_for("some_test_actor", {}) == ["ballast"]


def test_an_admin_challenge_needs_an_operator_a_user_challenge_a_wagering_app():
    assert roles_for("open_challenge", {"admin_created": True}) == ["operator"]
    assert roles_for("open_challenge", {"admin_created": False}) == ["wagering", "operator"]


def test_no_upstream_role_sends_an_actor_that_names_who_acts():
    """Every actor with an identity kwarg is an operator's (the names are operators'); Ballast's
    own scheduler may fire one that leaves the name out (a scheduled settlement cycle)."""
    from infra.contract import ACTORS

    for actor, spec in ACTORS.items():
        if set(spec.schema.model_fields) & set(IDENTITY_FIELDS):
            roles = roles_for(actor, {})
            assert "operator" in roles and set(roles) <= {"operator", "ballast"}, actor


def test_every_contract_actor_is_in_the_table():
    from infra.contract import ACTORS

    listed = set().union(*POLICY.values())
    assert set(ACTORS) <= listed, set(ACTORS) - listed
    assert set(POLICY) == set(ROLES)
    assert [r["role"] for r in policy_table()] == list(ROLES)


def test_a_role_that_may_not_send_the_actor_is_refused():
    assert rule_of(check_may_send, ("wagering",), "app", "deposit", {}) == "role_may_not_send"
    check_may_send(("wagering", "funding"), "app", "deposit", {})


@pytest.mark.parametrize("field", IDENTITY_FIELDS)
def test_an_identity_field_must_be_the_signer(field):
    assert rule_of(check_may_send, ("operator",), "ops-ada", "fund_treasury",
                   {field: "ops-bob"}) == "identity_not_signer"
    check_may_send(("operator",), "ops-ada", "fund_treasury", {field: "ops-ada"})


def test_key_rules():
    assert rule_of(check_key, None, "app", "k_1", NOW) == "unknown_key"
    assert rule_of(check_key, key(producer="other"), "app", "k_1", NOW) == "unknown_key"
    assert rule_of(check_key, key(key_revoked=True), "app", "k_1", NOW) == "revoked_key"
    assert rule_of(check_key, key(producer_revoked=True), "app", "k_1", NOW) == "revoked_producer"
    assert rule_of(check_key, key(valid_until_ms=NOW), "app", "k_1", NOW) == "key_not_valid"
    assert rule_of(check_key, key(), "app", "k_1", NOW - 2000) == "key_not_valid"
    assert check_key(key(valid_until_ms=NOW + 1), "app", "k_1", NOW).key_id == "k_1"


@given(age_ms=st.integers(min_value=-LIMITS.skew_ms, max_value=LIMITS.window_ms))
def test_a_signature_within_the_window_and_the_skew_is_fresh(age_ms):
    check_fresh(NOW - age_ms, NOW, LIMITS)


@given(beyond=st.integers(min_value=1, max_value=10**12))
def test_one_millisecond_beyond_the_window_or_the_skew_is_refused(beyond):
    assert rule_of(check_fresh, NOW - LIMITS.window_ms - beyond, NOW, LIMITS) == "too_old"
    assert rule_of(check_fresh, NOW + LIMITS.skew_ms + beyond, NOW, LIMITS) == "signed_in_future"


@pytest.mark.parametrize("raw", [
    None, "sig", {}, {"producer": "a", "key_id": "k", "signed_at": 1},
    {"producer": "a", "key_id": "k", "signed_at": "1", "signature": "s"},
    {"producer": "a", "key_id": "k", "signed_at": True, "signature": "s"},
    {"producer": "a", "key_id": "k", "signed_at": 1, "signature": "s", "extra": 1},
])
def test_malformed_signature_fields_are_refused(raw):
    assert rule_of(parse_auth, raw) == "malformed_signature"


def test_the_canonical_form_sorts_keys_at_every_level_without_whitespace():
    data = canonical_bytes(queue="q", actor="a", kwargs={"b": {"z": 1, "a": "é"}, "a": [2, 1]},
                           signed_at=5, producer="p", key_id="k")
    assert data == ('{"actor":"a","key_id":"k","kwargs":{"a":[2,1],"b":{"a":"é","z":1}},'
                    '"producer":"p","queue":"q","signed_at":5}').encode("utf-8")
