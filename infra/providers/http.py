"""An HTTP provider adapter (httpx).

The provider's API, as this adapter speaks it:

    POST {base_url}/orders            {"idempotency_key", "direction", "source_amount"}
         header Idempotency-Key       -> 200/201/202 {"order_id", "status", ...}
    GET  {base_url}/orders/{key}      -> 200 {"order_id", "status", "destination_amount",
                                              "fee_amount", "rate_ppm"} | 404
    GET  {base_url}/health            -> 200 when up
    GET  {base_url}/quote?direction=&source_amount=
                                      -> 200 {"rate_ppm", "fee_amount", "destination_amount"}
                                         (optional: otherwise the configured rate and fee)
    GET  {base_url}/balances          -> 200 {"USD": n, "USDC": n} (optional)

Transport errors, timeouts, 408, 429 and 5xx are retried with the *same*
idempotency key (so a retry can never open a second order); any other 4xx is
a rejection.  Amounts are integers in minor units; anything else in an
answer is treated as the provider being broken, not as money.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from domain.errors import InvalidCommand
from domain.conversions import quote as quote_at
from infra.providers.base import (
    Order,
    ProviderQuote,
    ProviderRejected,
    ProviderUnavailable,
    Report,
)

#: Provider status words -> Ballast's report states.
STATUS_MAP: dict[str, str] = {
    "accepted": "processing",
    "pending": "processing",
    "queued": "processing",
    "processing": "processing",
    "completed": "completed",
    "settled": "completed",
    "failed": "failed",
    "rejected": "failed",
    "cancelled": "failed",
    "expired": "failed",
}

DEFAULT_TIMEOUT_MS = 5_000  # ms, per request
DEFAULT_RETRIES = 2  # retries after the first request
DEFAULT_BACKOFF_MS = 200  # ms, doubled after each retry
RETRYABLE_STATUS = (408, 429)


def make_config(url: str, timeout_ms: int = DEFAULT_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
                backoff_ms: int = DEFAULT_BACKOFF_MS, rate_ppm: int | None = None,
                fee_bps: int | None = None) -> dict[str, Any]:
    """A validated configuration; ``rate_ppm``/``fee_bps`` are what selection assumes when the
    provider does not quote."""
    if not url.startswith(("http://", "https://")):
        raise InvalidCommand("an http provider needs an http(s) url")
    if not 1 <= timeout_ms <= 60_000 or not 0 <= retries <= 10 or not 0 <= backoff_ms <= 10_000:
        raise InvalidCommand("timeout 1..60000 ms, retries 0..10, backoff 0..10000 ms")
    if rate_ppm is not None and (type(rate_ppm) is not int or rate_ppm <= 0):
        raise InvalidCommand("rate must be positive")
    if fee_bps is not None and (type(fee_bps) is not int or not 0 <= fee_bps < 10_000):
        raise InvalidCommand("fee bps must be within 0..9999")
    config = {"url": url.rstrip("/"), "timeout_ms": timeout_ms, "retries": retries,
              "backoff_ms": backoff_ms}
    if rate_ppm is not None:
        config["rate_ppm"] = rate_ppm
    if fee_bps is not None:
        config["fee_bps"] = fee_bps
    return config


class HttpProvider:
    """Parameters:
      name: the provider's name.
      url: base URL of its API.
      timeout_ms: per request (connect, read, write).
      retries: how many times a failed request is repeated with the same key.
      backoff_ms: pause before the first retry, doubled after each.
      client: an httpx.Client to use (tests); one is made otherwise.
    """

    def __init__(self, name: str, url: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 retries: int = DEFAULT_RETRIES, backoff_ms: int = DEFAULT_BACKOFF_MS,
                 client: httpx.Client | None = None, rate_ppm: int | None = None,
                 fee_bps: int | None = None) -> None:
        self.name = name
        self.rate_ppm, self.fee_bps = rate_ppm, fee_bps
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_ms = backoff_ms
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_ms / 1000))

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> "HttpProvider":
        c = make_config(**config)
        return cls(name, c["url"], timeout_ms=c["timeout_ms"], retries=c["retries"],
                   backoff_ms=c["backoff_ms"], rate_ppm=c.get("rate_ppm"), fee_bps=c.get("fee_bps"))

    def initiate(self, order: Order) -> Report:
        body = {"idempotency_key": order.idempotency_key, "direction": order.direction,
                "source_amount": order.source_amount}
        response = self._request("POST", "/orders", json=body,
                                 headers={"Idempotency-Key": order.idempotency_key})
        if response.status_code in (200, 201, 202):
            return self._report(response)
        raise ProviderRejected(f"{self.name} refused the order: HTTP {response.status_code} "
                               f"{_detail(response)}")

    def status(self, idempotency_key: str) -> Report:
        response = self._request("GET", f"/orders/{idempotency_key}")
        if response.status_code == 404:
            return Report("not_found")
        if response.status_code != 200:
            raise ProviderUnavailable(f"{self.name} status: HTTP {response.status_code}")
        return self._report(response)

    def health(self) -> bool:
        try:
            return self.client.get(self.url + "/health").status_code == 200
        except httpx.HTTPError:
            return False

    def quote(self, direction: str, source_amount: int) -> ProviderQuote | None:
        """Its own quote (one request, no retry: a quote is not worth waiting for), else the
        configured rate and fee, else None."""
        try:
            response = self.client.get(self.url + "/quote", params={
                "direction": direction, "source_amount": source_amount})
            if response.status_code == 200:
                doc = response.json()
                values = [doc.get(k) for k in ("rate_ppm", "fee_amount", "destination_amount")]
                if all(type(v) is int and v >= 0 for v in values) and values[0] > 0:
                    return ProviderQuote(*values, source="provider")
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        if self.rate_ppm is None:
            return None
        q = quote_at(source_amount, direction, self.rate_ppm, self.fee_bps or 0)
        return ProviderQuote(self.rate_ppm, q.fee, q.net, source="configured")

    def balances(self) -> dict[str, int] | None:
        try:
            response = self.client.get(self.url + "/balances")
            doc = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(doc, dict) or not all(type(v) is int for v in doc.values()):
            return None
        return {str(k): v for k, v in doc.items()}

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send, retrying transport errors, timeouts, 408/429/5xx with the same body and key.

        Returns the first answer that is not retryable; raises ProviderUnavailable
        when retries run out (``maybe_accepted`` unless no request ever got through).
        """
        maybe_reached = False
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_ms * 2 ** (attempt - 1) / 1000)
            try:
                response = self.client.request(method, self.url + path, **kwargs)
            except httpx.ConnectError as exc:  # refused / unreachable: nothing was sent
                problem = f"cannot connect: {exc}"
                continue
            except httpx.TransportError as exc:  # timeout or cut: it may have arrived
                maybe_reached = True
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500 or response.status_code in RETRYABLE_STATUS:
                maybe_reached = True
                problem = f"HTTP {response.status_code}"
                continue
            return response
        raise ProviderUnavailable(f"{self.name} {method} {path}: {problem} "
                                  f"after {self.retries + 1} tries", maybe_accepted=maybe_reached)

    def _report(self, response: httpx.Response) -> Report:
        try:
            doc = response.json()
        except ValueError:
            raise ProviderUnavailable(f"{self.name} answered something that is not JSON") from None
        return report_from(self.name, doc)


def report_from(name: str, doc: Any) -> Report:
    """A provider's order document (a status answer or a callback) as a Report; anything
    not believable raises ProviderUnavailable."""
    if not isinstance(doc, dict):
        raise ProviderUnavailable(f"{name} answered something that is not an object")
    word = str(doc.get("status", "")).lower()
    state = STATUS_MAP.get(word)
    if state is None:
        raise ProviderUnavailable(f"{name} answered an unknown status {word!r}")
    ref = doc.get("order_id")
    if state != "completed":
        return Report(state, str(ref) if ref is not None else None, detail=doc.get("reason"))
    amounts = [doc.get("destination_amount"), doc.get("fee_amount", 0)]
    rate = doc.get("rate_ppm")
    if any(type(a) is not int or a < 0 for a in amounts) or (
            rate is not None and type(rate) is not int):
        raise ProviderUnavailable(f"{name} completed without integer amounts: {doc}")
    return Report("completed", str(ref) if ref is not None else None, amounts[0], amounts[1],
                  rate)


def _detail(response: httpx.Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("error") or doc.get("reason") or doc)[:200]
    except ValueError:
        return response.text[:200]
