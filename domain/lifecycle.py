"""Status lifecycles, pure: one transition table per entity, one mechanism for all.

A ``Lifecycle`` names an entity's statuses and which status may follow which.  The
domain asks it before a change (``check``); a repository's ``UPDATE`` binds
``sources(new)`` as the statuses its row may be in (``WHERE status = ANY(:from)``), so a
row in any other status is never moved, and a test holds every table's CHECK constraint
equal to its lifecycle's statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from domain.errors import Refused


class IllegalTransition(Refused):
    """A status change its lifecycle does not allow (permanent: dead-lettered at once)."""


@dataclass(frozen=True)
class Lifecycle:
    """``transitions``: status → the statuses that may follow it (terminal ones: none)."""

    entity: str
    initial: str
    transitions: Mapping[str, frozenset[str]]
    _sources: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        known = set(self.transitions)
        for after in self.transitions.values():
            unknown = after - known
            if unknown:
                raise ValueError(f"{self.entity}: unknown statuses {sorted(unknown)}")
        if self.initial not in known:
            raise ValueError(f"{self.entity}: unknown initial status {self.initial!r}")
        sources = {s: tuple(sorted(a for a, after in self.transitions.items() if s in after))
                   for s in known}
        object.__setattr__(self, "_sources", sources)

    @property
    def statuses(self) -> frozenset[str]:
        return frozenset(self.transitions)

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(s for s, after in self.transitions.items() if not after)

    def allows(self, current: str, new: str) -> bool:
        return new in self.transitions.get(current, frozenset())

    def check(self, current: str, new: str) -> str:
        """``new`` when ``current`` may become it; IllegalTransition otherwise."""
        if not self.allows(current, new):
            raise IllegalTransition(f"a {self.entity} cannot go from {current} to {new}")
        return new

    def sources(self, new: str) -> tuple[str, ...]:
        """The statuses from which ``new`` may be reached (sorted), for a guarded UPDATE."""
        if new not in self._sources:
            raise ValueError(f"{self.entity}: unknown status {new!r}")
        return self._sources[new]


def table(**after: tuple[str, ...]) -> dict[str, frozenset[str]]:
    return {status: frozenset(nxt) for status, nxt in after.items()}
