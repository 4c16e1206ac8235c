"""A periodic step meets a database outage: it retries within its period instead of
being dead-lettered on the first error (issue 16), through a real worker."""

from __future__ import annotations

import json
import socket
import threading

import dramatiq
import pytest

from infra import rabbit
from tests.e2e.poison_actors import QUEUE as POISON_QUEUE
from tests.harness import Worker, publish_raw, send, uid, wait_until

pytestmark = pytest.mark.e2e


class Outage:
    """A TCP proxy to PostgreSQL that refuses every connection until ``restore()``."""

    def __init__(self, target=("127.0.0.1", 5432)) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server: socket.socket | None = None

    def restore(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.server:
            self.server.close()


def test_the_outbox_sweep_outlasts_a_short_database_outage(env, clean_queues):
    outage = Outage()
    url = env.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{outage.port}")
    assert url != env.database_url
    w = Worker(env, queues=["ballast.step.outbox"], BALLAST_DATABASE_URL=url).start()
    try:
        rid = uid("sweep")
        send(env, "sweep_outbox", request_id=rid)
        wait_until(lambda: '"message.retry"' in w.log() and rid in w.log(), timeout=20,
                   what="the sweep to fail and be retried")
        outage.restore()
        wait_until(lambda: any('"message.processed"' in line and rid in line
                               for line in w.log().splitlines()), timeout=20,
                   what="the retried sweep to succeed")
        assert not [d for d in rabbit.list_dead_letters("ballast.step.outbox", 100, env.broker_url)
                    if d.summary()["request_id"] == rid]
    finally:
        w.stop()
        outage.close()


def test_retries_stop_at_the_steps_own_budget(env, clean_queues):
    w = Worker(env, queues=[POISON_QUEUE], modules=["tests.e2e.poison_actors"]).start()
    try:
        key = uid("k")
        msg = dramatiq.Message(queue_name=POISON_QUEUE, actor_name="budgeted_transient", args=(),
                               kwargs={"key": key}, options={})
        publish_raw(env, POISON_QUEUE, json.dumps(msg.asdict()).encode())
        letter = wait_until(lambda: [d for d in rabbit.list_dead_letters(POISON_QUEUE, 100, env.broker_url)
                                     if d.message_id == msg.message_id], timeout=30,
                            what="the dead letter")[0]
        assert letter.info["reason"].startswith("time budget spent")
        assert 1 <= letter.info["retries"] < 50  # retried, and stopped by the 1.5 s budget
    finally:
        w.stop()
