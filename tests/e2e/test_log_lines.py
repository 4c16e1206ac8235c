"""Log lines stay whole and bounded under big concurrent payloads (issue 16).

Twenty concurrent 100 KB payloads used to cut a worker's logs off for good: two
separately locked writers shared one pipe, and Dramatiq printed every kwarg of a
failed message in full.
"""

from __future__ import annotations

import json
import threading

import pytest

from infra.logs import MAX_LINE_CHARS
from tests.e2e.test_poison import WALLETS, assert_still_processing, envelope, letters_with
from tests.harness import Worker, publish_raw, uid, wait_until

pytestmark = pytest.mark.e2e


def test_twenty_concurrent_100kb_payloads_leave_every_log_line_whole(env, engine, clean_queues):
    w = Worker(env, threads=8)
    w.start()
    try:
        before = len(w.log().splitlines())
        markers = [uid("huge") for _ in range(20)]

        def publish(marker):
            body = envelope(marker)
            body["kwargs"]["reference"] = marker + "y" * 100_000  # far over its 200 characters
            publish_raw(env, WALLETS, json.dumps(body).encode())

        threads = [threading.Thread(target=publish, args=(m,)) for m in markers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: all(letters_with(env, m) for m in markers), timeout=60,
                   what="20 dead letters")
        assert_still_processing(env, engine)
        wait_until(lambda: w.log().count('"message.processed"') >= 1, timeout=20,
                   what="the valid deposit's log line")
        lines = w.log().splitlines()
        assert len(lines) > before
        docs = []
        for line in lines:
            assert len(line) <= MAX_LINE_CHARS, len(line)
            docs.append(json.loads(line))  # every line is one whole JSON document
        dead = [d for d in docs if d.get("event") == "message.dead_lettered"
                and any(m == d.get("request_id") for m in markers)]
        assert len(dead) == 20, "no line was lost"
        # The long kwarg is in no line at all (Dramatiq's own lines name a message by actor
        # and id, never by its kwargs); whatever is long is cut.
        assert not any("y" * 100 in line for line in lines), "a kwarg value reached a log line"
        assert any(d.get("logger", "").startswith("dramatiq") or "Failed to process" in d.get("event", "")
                   for d in docs), "Dramatiq's own lines are JSON too"
    finally:
        w.stop()
