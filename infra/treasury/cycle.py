"""The buffer alerts, raised while true and resolved when clear, and whether
auto-rebalancing is on (the settlement cycle itself is ``services/buffers.py``)."""

from __future__ import annotations

from domain import buffers as b
from domain.money import format_minor
from infra.treasury import store

AUTO_REBALANCE = "auto_rebalance"


def auto_rebalance_enabled(conn) -> bool:
    return bool(store.get_setting(conn, AUTO_REBALANCE, True))


def evaluate_buffer_alerts(uow, buffers: dict[str, store.Buffer] | None = None) -> None:
    """Critical low and over capitalized, raised while true and resolved when cleared."""
    buffers = buffers or uow.buffers.load()
    for buf in buffers.values():
        t = buf.thresholds
        checks = {
            "critical_low": (buf.status == b.CRITICAL_LOW, "critical",
                             f"{buf.account_type} is critically low: "
                             f"{format_minor(buf.balance, buf.currency)} < "
                             f"{format_minor(t.min, buf.currency)}"),
            "over_capitalized": (buf.status == b.OVER_CAPITALIZED, "warning",
                                 f"{buf.account_type} is over capitalized: "
                                 f"{format_minor(buf.balance, buf.currency)} > "
                                 f"{format_minor(t.max, buf.currency)}"),
        }
        for name, (true, severity, subject) in checks.items():
            key = f"buffer:{name}:{buf.account_type}"
            if true:
                uow.alerts.raise_(kind="buffer", severity=severity, subject=subject,
                                  dedupe_key=key,
                                  data={"account_type": buf.account_type, "balance": buf.balance,
                                        "min": t.min, "target": t.target, "max": t.max})
            else:
                uow.alerts.resolve(key, note=f"{buf.account_type} is {buf.status}")
        if buf.status != b.CRITICAL_LOW:
            for name in ("cannot_replenish", "shortfall"):
                uow.alerts.resolve(f"buffer:{name}:{buf.account_type}",
                                   note=f"{buf.account_type} is {buf.status}")
