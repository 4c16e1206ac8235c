"""The alert conditions that no single message raises, and ``evaluate``, which runs them.

``CONDITIONS`` is the one table of them (the ``evaluate_alerts`` sweep runs it every
minute): a condition receives an open UnitOfWork and raises or resolves alerts through
infra.alerts.  A new condition is a function in its capability's module, listed here.
Conditions are independent: one failing does not stop the rest.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from infra import alerts, guard
from infra.challenges import conditions as challenges
from infra.journal import conditions as journal
from infra.logs import get_logger
from infra.middleware import auth
from services import treasury_conditions as treasury
from infra.uow import UnitOfWork
from schedules import conditions as schedules

log = get_logger(__name__)

Condition = Callable[[UnitOfWork], None]

#: name (the ``alert_condition_failed:{name}`` key, the claim's actor suffix) -> condition
CONDITIONS: dict[str, Condition] = {
    "dead_letters": alerts.dead_letters,
    "alert_webhooks": alerts.alert_webhooks,
    "auth_refusals": auth.bursts_over,
    "balance_alert_expiry": guard.balance_alert_expiry,
    "schedules": schedules.schedules_firing,
    "treasury.buffers": treasury.buffer_levels,
    "treasury.providers": treasury.provider_health,
    "treasury.failure_rate": treasury.failure_rate,
    "treasury.stale_jobs": treasury.stale_jobs,
    "treasury.reconciliation": treasury.reconciliation,
    "treasury_balancing": challenges.treasury_balancing,
    "unmatched_payments": journal.unmatched_payments,
}


def evaluate(conditions: Mapping[str, Condition], *, request_id: str, payload: Any = None,
             engine=None) -> dict[str, str]:
    """Run each condition in its own claimed unit of work; returns ``{name: outcome}``
    (``ok``, ``duplicate`` or ``failed``).

    A condition that raises is rolled back alone and leaves an open
    ``alert_condition_failed`` alert naming it (resolved once it runs cleanly
    again); a repeated ``request_id`` skips the conditions that already ran.
    """
    outcomes: dict[str, str] = {}
    for name, fn in sorted(conditions.items()):
        key = f"alert_condition_failed:{name}"
        try:
            with UnitOfWork(actor=f"evaluate_alerts:{name}", request_id=request_id,
                            payload=payload, engine=engine) as uow:
                if not uow.claim():
                    outcomes[name] = "duplicate"
                    continue
                fn(uow)
                alerts.resolve_alert(uow, key, note="condition evaluated cleanly")
                uow.commit()
            outcomes[name] = "ok"
        except Exception as exc:
            outcomes[name] = "failed"
            log.exception("alert.condition_failed", condition=name, error=str(exc)[:300])
            try:
                with UnitOfWork(engine=engine) as uow:
                    alerts.raise_alert(
                        uow, kind="alert_condition_failed", severity="warning",
                        subject=f"alert condition {name} failed: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}",
                        dedupe_key=key, data={"condition": name, "error": str(exc)[:1000]},
                    )
                    uow.commit()
            except Exception:  # the database itself is down: the next sweep will tell
                log.exception("alert.condition_failure_unrecorded", condition=name)
    return outcomes
