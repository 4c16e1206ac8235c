"""Whether auto-rebalancing is on (the settlement cycle and the buffer alerts are
``services/buffers.py``)."""

from __future__ import annotations

from infra.treasury import store

AUTO_REBALANCE = "auto_rebalance"


def auto_rebalance_enabled(conn) -> bool:
    return bool(store.get_setting(conn, AUTO_REBALANCE, True))
