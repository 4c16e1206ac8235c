"""The one retry rule (infra.errors.verdict), for any history of failures (issue 11)."""

from __future__ import annotations

import sqlalchemy.exc
from hypothesis import given, strategies as st

from domain.errors import InvalidCommand, Refused
from infra.errors import RetryPolicy, Transient, is_transient, kind_of, verdict
from services.journal import LinkRace
from services.markets import SettlementPending
from infra.middleware.auth import VerificationUnavailable
from services.jobs import ProviderUncertain
from services.conversions import JobBusy


def integrity(sqlstate: str) -> sqlalchemy.exc.IntegrityError:
    orig = Exception("violation")
    orig.sqlstate = sqlstate
    return sqlalchemy.exc.IntegrityError("INSERT", {}, orig)


def operational() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))


def test_every_failure_has_one_kind():
    assert kind_of(Refused("no")) == kind_of(InvalidCommand("bad")) == "permanent"
    for exc in (operational(), integrity("23505"), ConnectionError(), TimeoutError(),
                LinkRace("x"), SettlementPending("x"), JobBusy("x"), ProviderUncertain("x"),
                VerificationUnavailable("x")):
        assert kind_of(exc) == "transient", exc
        assert is_transient(exc)
    for exc in (ValueError(), KeyError("k"), TypeError(), integrity("23514"),
                integrity("23503"), integrity("23502"), RuntimeError()):
        assert kind_of(exc) == "unexpected", exc
        assert is_transient(exc) is None


failures = st.sampled_from([Refused("no"), operational(), Transient("busy"), ValueError("bug"),
                            integrity("23514")])


@given(exc=failures, retries=st.integers(0, 30), max_retries=st.integers(0, 20),
       unexpected=st.integers(0, 5), budget=st.integers(1, 10**6), elapsed=st.integers(0, 2 * 10**6))
def test_verdict(exc, retries, max_retries, unexpected, budget, elapsed):
    policy = RetryPolicy(max_retries=max_retries, budget_ms=budget, unexpected_max_retries=unexpected)
    v = verdict(exc, policy, retries=retries, first_failure_ms=10**9, now_ms=10**9 + elapsed)
    kind = kind_of(exc)
    limit = {"permanent": 0, "transient": max_retries, "unexpected": min(max_retries, unexpected)}[kind]
    assert v.kind == kind
    assert v.retry == (retries < limit and elapsed < budget)
    if not v.retry:
        assert v.why  # a dead letter always says why
