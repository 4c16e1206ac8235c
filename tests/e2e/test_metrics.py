"""Workers expose Prometheus metrics, including Ballast's own counters."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.harness import Worker, send, uid, wait_until

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_exposes_message_and_dead_letter_metrics(env, clean_queues):
    port = free_port()
    w = Worker(env, BALLAST_METRICS_PORT=str(port), BALLAST_METRICS_HOST="127.0.0.1")
    w.start()
    try:
        user = uid()
        send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=10, reference="x")
        send(env, "deposit", request_id=uid("r"), user_id=user, currency="NGN", amount=10, reference="x",
             unexpected="field")

        def scrape():
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            return text if ('ballast_dead_letters_total{actor="deposit",code="invalid"' in text
                            and 'ballast_messages_total{actor="deposit"' in text) else None

        text = wait_until(scrape, 30, what="metrics")
        assert 'queue="ballast.wallets"' in text
    finally:
        w.stop()
