"""Alert conditions that no single message raises, evaluated by ``evaluate_alerts``.

Each capability registers its own with ``@condition("name")``; a condition
receives an open UnitOfWork and raises or resolves alerts through
infra.alerts.  Conditions are independent: one failing does not stop the rest.
"""

from __future__ import annotations

from typing import Callable

from infra.uow import UnitOfWork

Condition = Callable[[UnitOfWork], None]

CONDITIONS: dict[str, Condition] = {}


def condition(name: str) -> Callable[[Condition], Condition]:
    def register(fn: Condition) -> Condition:
        CONDITIONS[name] = fn
        return fn

    return register
