"""Same-terms resends: the one rule for creating something under an id the sender chose.

A create that names its own id (a challenge, a market, a commitment, a participation)
may be sent again — a retry after a timeout, a second request id for the same thing.
Sent again on the same terms it is harmless: nothing changes.  Sent on other terms it is
refused, saying what differs, and nothing changes either:

    check_same_terms("challenge c1", existing={"stake": 100}, wanted={"stake": 200})
    # Refused: challenge c1 already exists with other terms: stake is 100, not 200
"""

from __future__ import annotations

from typing import Any, Mapping

from domain.errors import Refused


def differences(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (existing, wanted)}`` for each field of ``wanted`` that differs."""
    return {k: (existing.get(k), v) for k, v in wanted.items() if existing.get(k) != v}


def check_same_terms(what: str, existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Nothing when ``existing`` holds ``wanted``'s terms; Refused naming the differences."""
    diff = differences(existing, wanted)
    if diff:
        said = ", ".join(f"{k} is {old!r}, not {new!r}" for k, (old, new) in diff.items())
        raise Refused(f"{what} already exists with other terms: {said}")
