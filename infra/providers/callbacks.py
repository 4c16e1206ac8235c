"""Signing provider callbacks: HMAC-SHA256 with the provider's secret over timestamp and body.

    X-Ballast-Timestamp: unix seconds when the provider sent it
    X-Ballast-Signature: hex HMAC-SHA256(secret, f"{timestamp}." + body)

The body is JSON with a ``callback_id`` (the nonce: one callback, one id) and the
order's ``idempotency_key``, ``status`` and, when completed, its integer amounts
(the same words as ``GET /orders/{key}``).  Used by the providers that send
callbacks (the simulated one, a test's fake HTTP provider) and by the endpoint
that receives them (``ballast callbacks serve``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx

TIMESTAMP_HEADER = "X-Ballast-Timestamp"
SIGNATURE_HEADER = "X-Ballast-Signature"
#: A callback signed longer ago (or further ahead) than this is refused as stale.
MAX_AGE_S = 300  # s


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def valid(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Constant-time check of a signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def fresh(timestamp: str, now: float | None = None, max_age_s: int = MAX_AGE_S) -> bool:
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    return abs((now if now is not None else time.time()) - sent) <= max_age_s


def signed_request(secret: str, doc: dict[str, Any], *,
                   timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a callback carrying ``doc`` (a ``callback_id`` is added)."""
    doc = {"callback_id": uuid.uuid4().hex, **doc}
    body = json.dumps(doc, separators=(",", ":")).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    return body, {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts),
                  SIGNATURE_HEADER: sign(secret, ts, body)}


def send(url: str, secret: str, doc: dict[str, Any], *, timeout_s: float = 10.0) -> httpx.Response:
    """POST one signed callback (what a provider does when an order changes)."""
    body, headers = signed_request(secret, doc)
    return httpx.post(url, content=body, headers=headers, timeout=timeout_s)
