"""A simulated provider for the demo and tests.

It behaves like an external service whose books live in the
``simulated_provider_orders`` table: every worker process sees the same
orders, and they survive restarts.  Its configuration (on the provider's
row) is read at each call, so changing ``fail_mode`` takes effect at once.

Failure modes:
  none       accepts, completes after ``latency_polls`` status calls.
  reject     refuses every order.
  error      answers every order with an outage (nothing recorded).
  timeout    records the order, but the answer is lost (the caller times out).
  stick      accepts, then stays ``processing`` for as long as the mode lasts.
  fail_late  accepts, then reports ``failed`` after ``latency_polls`` status calls.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from domain.conversions import PPM, quote
from domain.errors import InvalidCommand
from infra.db.engine import get_engine
from infra.db.tables import conversion_providers, simulated_provider_orders
from infra.providers import callbacks
from infra.providers.base import (
    Order,
    ProviderQuote,
    ProviderRejected,
    ProviderUnavailable,
    Report,
)

FAIL_MODES = ("none", "reject", "error", "timeout", "stick", "fail_late")


def make_config(rate_ppm: int = PPM, fee_bps: int = 0, latency_polls: int = 1,
                fail_mode: str = "none") -> dict[str, Any]:
    """A validated configuration for the provider's row."""
    if type(rate_ppm) is not int or rate_ppm <= 0:
        raise InvalidCommand("rate must be positive")
    if type(fee_bps) is not int or not 0 <= fee_bps < 10_000:
        raise InvalidCommand("fee bps must be within 0..9999")
    if type(latency_polls) is not int or not 0 <= latency_polls <= 1000:
        raise InvalidCommand("latency polls must be within 0..1000")
    if fail_mode not in FAIL_MODES:
        raise InvalidCommand(f"fail mode must be one of {', '.join(FAIL_MODES)}")
    return {"rate_ppm": rate_ppm, "fee_bps": fee_bps, "latency_polls": latency_polls,
            "fail_mode": fail_mode}


_o = simulated_provider_orders.c

#: Its books of completed orders per currency: source received (+), destination and fee
#: paid (-).
BALANCES = text(
    "SELECT cur, sum(amount) AS total FROM ("
    " SELECT split_part(direction, '->', 1) AS cur, source_amount AS amount"
    " FROM simulated_provider_orders WHERE provider = :p AND state = 'completed'"
    " UNION ALL SELECT split_part(direction, '->', 2),"
    " -(destination_amount + fee_amount)"
    " FROM simulated_provider_orders WHERE provider = :p AND state = 'completed'"
    ") x GROUP BY cur")


class SimulatedProvider:
    """Parameters:
      name: the provider's name (its orders are kept apart by it).
      config: see ``make_config``; re-read from the database on each call.
      engine: the database holding the simulated books.
    """

    def __init__(self, name: str, config: dict[str, Any], engine: Engine | None = None) -> None:
        self.name = name
        self.config = make_config(**config)
        self.engine = engine or get_engine()

    def _current_mode(self, conn) -> str:
        row = conn.execute(select(conversion_providers.c.config)
                           .where(conversion_providers.c.name == self.name)).scalar_one_or_none()
        return (row or self.config).get("fail_mode", "none")

    def initiate(self, order: Order) -> Report:
        with self.engine.begin() as conn:
            mode = self._current_mode(conn)
            if mode == "reject":
                raise ProviderRejected(f"{self.name} refused the order (simulated)")
            if mode == "error":
                raise ProviderUnavailable(f"{self.name} answered 503 (simulated)")
            q = quote(order.source_amount, order.direction, self.config["rate_ppm"],
                      self.config["fee_bps"])
            conn.execute(
                insert(simulated_provider_orders).values(
                    provider=self.name, idempotency_key=order.idempotency_key,
                    direction=order.direction, source_amount=order.source_amount,
                    destination_amount=q.net, fee_amount=q.fee, rate_ppm=self.config["rate_ppm"],
                ).on_conflict_do_nothing())
            row = self._order(conn, order.idempotency_key)
        if (row.direction, row.source_amount) != (order.direction, order.source_amount):
            raise ProviderRejected(f"idempotency key {order.idempotency_key} reused for another order")
        if mode == "timeout":
            raise ProviderUnavailable(f"{self.name} did not answer in time (simulated)")
        return Report("processing", reference=self._reference(order.idempotency_key))

    def status(self, idempotency_key: str) -> Report:
        with self.engine.begin() as conn:
            row = conn.execute(
                update(simulated_provider_orders).where(*self._key(idempotency_key))
                .values(polls=_o.polls + 1, updated_at=func.now())
                .returning(*simulated_provider_orders.c)).one_or_none()
            if row is None:
                return Report("not_found")
            state = row.state
            if state == "processing":
                mode = self._current_mode(conn)
                if mode != "stick" and row.polls >= self.config["latency_polls"]:
                    state = "failed" if mode == "fail_late" else "completed"
                    conn.execute(update(simulated_provider_orders)
                                 .where(*self._key(idempotency_key)).values(state=state))
        ref = self._reference(idempotency_key)
        if state == "completed":
            return Report("completed", ref, row.destination_amount, row.fee_amount, row.rate_ppm)
        if state == "failed":
            return Report("failed", ref, detail=f"{self.name} failed the order (simulated)")
        return Report("processing", ref)

    def health(self) -> bool:
        with self.engine.connect() as conn:
            return self._current_mode(conn) not in ("error", "timeout")

    def quote(self, direction: str, source_amount: int) -> ProviderQuote | None:
        """Its configured rate and fee applied to the amount (what it would deliver)."""
        q = quote(source_amount, direction, self.config["rate_ppm"], self.config["fee_bps"])
        return ProviderQuote(self.config["rate_ppm"], q.fee, q.net, "provider")

    def balances(self) -> dict[str, int]:
        """Its books of completed orders: source received (+), destination and fee paid (-)."""
        with self.engine.connect() as conn:
            rows = conn.execute(BALANCES, {"p": self.name})
            return {r.cur: int(r.total) for r in rows}

    def finish(self, idempotency_key: str) -> Report:
        """The order reaches its end now (as its failure mode says), without a status read:
        what the provider does before it calls back."""
        with self.engine.begin() as conn:
            mode = self._current_mode(conn)
            if mode != "stick":
                conn.execute(
                    update(simulated_provider_orders)
                    .where(*self._key(idempotency_key), _o.state == "processing")
                    .values(state="failed" if mode == "fail_late" else "completed",
                            updated_at=func.now()))
            row = self._order(conn, idempotency_key)
        ref = self._reference(idempotency_key)
        if row.state == "completed":
            return Report("completed", ref, row.destination_amount, row.fee_amount, row.rate_ppm)
        if row.state == "failed":
            return Report("failed", ref, detail=f"{self.name} failed the order (simulated)")
        return Report("processing", ref)

    def send_callback(self, idempotency_key: str, url: str, secret: str):
        """Finish the order and tell Ballast through its callback endpoint (signed)."""
        report = self.finish(idempotency_key)
        doc = {"idempotency_key": idempotency_key, "status": report.state,
               "order_id": report.reference}
        if report.state == "completed":
            doc.update(destination_amount=report.destination_amount,
                       fee_amount=report.fee_amount, rate_ppm=report.rate_ppm)
        elif report.detail:
            doc["reason"] = report.detail
        return callbacks.send(url, secret, doc)

    def _key(self, key: str):
        return _o.provider == self.name, _o.idempotency_key == key

    def _order(self, conn, key: str):
        return conn.execute(select(simulated_provider_orders).where(*self._key(key))).one()

    def _reference(self, key: str) -> str:
        return f"sim-{self.name}-{key}"
