"""Receiving provider callbacks (``ballast callbacks serve``): verified, then applied as a poll.

    POST /callbacks/{provider}
        X-Ballast-Timestamp, X-Ballast-Signature (infra/providers/callbacks.py)
        {"callback_id", "idempotency_key", "status", "order_id", amounts...}

    200 {"job_id", "status", "applied"}   applied (or nothing left to change)
    400 malformed · 401 bad signature or stale (> 5 min) · 404 unknown provider or order
    409 replayed callback_id · 503 could not be applied now (the provider should retry)

A callback is believed only with a valid signature of the provider's secret over its
timestamp and body, within five minutes, and once per ``callback_id`` (the nonce table).
It is then applied by ``apply`` — the ``apply_conversion_callback`` step, which drives the
job by the very path of a poll, under the job's lock — so a callback and a poll arriving
together change the job once.  (The endpoint is an adapter: ``ballast callbacks serve``
hands it the step.)
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert

from infra.db.engine import get_engine
from infra.db.tables import conversion_attempts, conversion_callback_nonces
from infra.logs import get_logger
from infra.providers import ProviderError, Report, callbacks as signing
from infra.providers.http import report_from
from infra.treasury import store

log = get_logger(__name__)

PATH = re.compile(r"^/callbacks/([A-Za-z0-9_.-]{1,64})$")
MAX_BODY_BYTES = 64 * 1024

#: Applies a verified callback: ``apply(job_id, idempotency_key, report)`` is True when it
#: changed the job (or there was nothing left to change), False when nothing was applied.
Apply = Callable[[int, str, Report], bool]

_a, _n = conversion_attempts.c, conversion_callback_nonces.c


def handle(engine: Engine, provider: str, headers: Mapping[str, str], body: bytes,
           apply: Apply) -> tuple[int, dict[str, Any]]:
    """Verify one callback and ``apply`` it.  Returns (HTTP status, answer)."""
    try:
        nonce, key, report = _believe(engine, provider, headers, body)
    except _NotBelieved as refusal:
        return refusal.code, {"error": refusal.error}
    with engine.connect() as conn:
        job_id = conn.execute(select(_a.job_id).where(_a.provider == provider,
                                                      _a.idempotency_key == key)).scalar_one_or_none()
    if job_id is None:
        return 404, {"error": f"{provider} has no order {key} of ours"}
    with engine.begin() as conn:
        fresh_nonce = conn.execute(
            insert(conversion_callback_nonces).values(provider=provider, nonce=nonce,
                                                      idempotency_key=key)
            .on_conflict_do_nothing().returning(_n.nonce)).scalar_one_or_none()
    if not fresh_nonce:
        log.warning("callback.replayed", provider=provider, callback_id=nonce)
        return 409, {"error": f"callback {nonce} was already received"}
    try:
        applied = apply(job_id, key, report)
    except Exception as exc:  # let the provider send it again (with its nonce freed)
        with engine.begin() as conn:
            conn.execute(delete(conversion_callback_nonces)
                         .where(_n.provider == provider, _n.nonce == nonce))
        log.exception("callback.failed", provider=provider, job_id=job_id)
        return 503, {"error": f"{type(exc).__name__}: could not apply now"}
    with engine.connect() as conn:
        status = store.get_job(conn, job_id).status
    log.info("callback.received", provider=provider, job_id=job_id, state=report.state,
             applied=applied, status=status)
    return 200, {"job_id": job_id, "status": status, "applied": applied}


class _NotBelieved(Exception):
    """A callback refused before it touches a job: the HTTP status and the error said."""

    def __init__(self, code: int, error: str) -> None:
        super().__init__(error)
        self.code, self.error = code, error


def _believe(engine: Engine, provider: str, headers: Mapping[str, str],
             body: bytes) -> tuple[str, str, Report]:
    """``(callback_id, idempotency_key, report)`` of a callback signed with the provider's
    secret within five minutes; ``_NotBelieved`` otherwise."""
    with engine.connect() as conn:
        secret = store.callback_secret(conn, provider)
    if not secret:
        raise _NotBelieved(404, f"no callbacks for provider {provider!r}")
    ts = headers.get(signing.TIMESTAMP_HEADER) or ""
    if not signing.valid(secret, ts, body, headers.get(signing.SIGNATURE_HEADER) or ""):
        log.warning("callback.bad_signature", provider=provider)
        raise _NotBelieved(401, "bad signature")
    if not signing.fresh(ts):
        log.warning("callback.stale", provider=provider, timestamp=ts)
        raise _NotBelieved(401, f"stale callback (more than {signing.MAX_AGE_S} s old)")
    try:
        doc = json.loads(body)
        return str(doc["callback_id"]), str(doc["idempotency_key"]), report_from(provider, doc)
    except (ValueError, KeyError, TypeError, ProviderError) as exc:
        raise _NotBelieved(400, f"malformed callback: {exc}"[:300]) from None


def make_server(host: str, port: int, apply: Apply,
                engine: Engine | None = None) -> ThreadingHTTPServer:
    engine = engine or get_engine()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # structlog says what matters
            pass

        def _answer(self, code: int, doc: dict[str, Any]) -> None:
            out = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._answer(200, {"ok": True})
            self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            match = PATH.match(self.path)
            if not match:
                return self._answer(404, {"error": "not found"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                return self._answer(400, {"error": "a body of 1..65536 bytes is needed"})
            body = self.rfile.read(length)
            try:
                code, doc = handle(engine, match.group(1), self.headers, body, apply)
            except Exception as exc:  # the database is down: the provider retries
                log.exception("callback.error", provider=match.group(1))
                code, doc = 503, {"error": f"{type(exc).__name__}"}
            self._answer(code, doc)

    return ThreadingHTTPServer((host, port), Handler)


def serve(host: str, port: int, apply: Apply) -> None:
    """Serve until SIGTERM/SIGINT, applying verified callbacks with ``apply``."""
    import signal
    import threading

    server = make_server(host, port, apply)
    stop = threading.Event()

    def shutdown(*_: Any) -> None:
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutdown)
    log.info("callbacks.serving", host=host, port=server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log.info("callbacks.stopped")
