"""Helpers shared by the treasury tests (no tests here).

Buffers are singletons of the run's database, so each test starts from a
known state: no job in flight, every earlier provider paused, exact balances.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from domain import conversions as conv
from domain.buffers import DEFAULT_THRESHOLDS, account_code
from domain.money import major_to_minor
from infra import ledger
from infra.providers.simulated import make_config
from infra.treasury import store
from tests.steps import cycle, polling, submission, levers
from infra.uow import UnitOfWork
from tests.harness import uid


def usd(major: int) -> int:
    return major_to_minor(major, "USD")


def usdc(major: int) -> int:
    return major_to_minor(major, "USDC")


def reset(engine, *, usdc_buffer: int = 0, fiat: int = 0, broker: int = 0) -> None:
    """No job in flight, every provider paused, default thresholds, these balances."""
    with engine.connect() as conn:
        active = store.list_jobs(conn, active_only=True, limit=10_000)
    for job in active:
        levers.cancel(job.id, by="test", reason="reset", force=True, engine=engine)
    with UnitOfWork(actor="test", request_id=uid("reset"), engine=engine) as uow:
        uow.conn.execute(text("UPDATE conversion_providers SET status = 'paused'"))
        for account_type, t in DEFAULT_THRESHOLDS.items():
            store.set_thresholds(uow.conn, account_type, t, "test")
        cycle.set_auto_rebalance(uow, True, "test")
        wanted = {"system_buffer_usdc": usdc_buffer, "system_buffer_fiat": fiat,
                  "broker_operational": broker}
        current = ledger.balances(uow.conn, [account_code(a) for a in wanted])
        for account_type, amount in wanted.items():
            delta = amount - current.get(account_code(account_type), 0)
            if delta:
                cycle.record_flow(uow, account_type, delta, "test reset")
        uow.commit()


def add_provider(engine, *, priority: int = 1, name: str | None = None, kind: str = "simulated",
                 config: dict[str, Any] | None = None, **columns: Any) -> str:
    """A fresh provider (simulated unless told); returns its name."""
    name = name or uid("prov")
    row = store.ProviderRow(
        name, kind, priority, columns.pop("status", "active"),
        tuple(columns.pop("directions", sorted(conv.DIRECTIONS))),
        columns.pop("min_amount", 0), columns.pop("max_amount", None),
        columns.pop("daily_limit", None),
        config if config is not None else make_config(latency_polls=1), 0, 0)
    assert not columns, columns
    with UnitOfWork(actor="test", request_id=uid("prov"), engine=engine) as uow:
        store.add_provider(uow.conn, row)
        uow.commit()
    return name


def sim(**kw: Any) -> dict[str, Any]:
    kw.setdefault("latency_polls", 1)
    return make_config(**kw)


def set_mode(engine, name: str, fail_mode: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversion_providers SET config = jsonb_set(config, "
                          "'{fail_mode}', to_jsonb(CAST(:m AS text))) WHERE name = :n"),
                     {"m": fail_mode, "n": name})


def seed_outcomes(engine, provider: str, successes: int, failures: int) -> None:
    """Outcomes in the health window, as if earlier jobs had gone through ``provider``."""
    with engine.begin() as conn:
        job_id = conn.execute(text(
            "INSERT INTO conversion_jobs (kind, direction, source_account, destination_account, "
            "source_currency, destination_currency, source_amount, status, requested_by, trigger, "
            "finished_at) VALUES ('manual', 'USD->USDC', 'buffer:system_buffer_fiat', "
            "'buffer:system_buffer_usdc', 'USD', 'USDC', 1, 'cancelled', 'seed', 'seed', now()) "
            "RETURNING id")).scalar_one()
        for n in range(successes + failures):
            conn.execute(text(
                "INSERT INTO conversion_attempts (job_id, attempt_no, provider, idempotency_key, "
                "par_amount, status, outcome_at) VALUES (:j, :n, :p, :k, 0, :s, now())"),
                {"j": job_id, "n": n + 1, "p": provider, "k": uid("seed"),
                 "s": "completed" if n < successes else "error"})


def cycle_now(engine, trigger: str = "manual") -> list[int]:
    with UnitOfWork(actor="run_settlement_cycle", request_id=uid("cycle"),
                    payload={"trigger": trigger}, engine=engine) as uow:
        assert uow.claim()
        created = cycle.run_cycle(uow, trigger)
        uow.commit()
    return created


def job(engine, job_id: int) -> store.Job:
    with engine.connect() as conn:
        return store.get_job(conn, job_id)


def attempts(engine, job_id: int) -> list[store.Attempt]:
    with engine.connect() as conn:
        return store.attempts_of(conn, job_id)


def balances(engine, *codes: str) -> dict[str, int]:
    with engine.connect() as conn:
        found = ledger.balances(conn, codes)
    return {c: found.get(c, 0) for c in codes}


def balance(engine, code: str) -> int:
    return balances(engine, code)[code]


def ledger_check(engine) -> dict:
    with engine.connect() as conn:
        return ledger.check(conn)


def open_alert(engine, key: str):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM alerts WHERE dedupe_key = :k AND status <> 'resolved'"),
                            {"k": key}).one_or_none()


def outbox_events(engine, name: str, job_id: int) -> list[dict]:
    with engine.connect() as conn:
        return [r.body for r in conn.execute(text(
            "SELECT body FROM outbox WHERE kind = 'event' AND event_name = :n "
            "AND (body->'data'->>'job_id')::bigint = :j ORDER BY id"), {"n": name, "j": job_id})]


def drive(engine, job_id: int, max_polls: int = 20) -> store.Job:
    """Submit (if pending) and poll until the job is finished or polls run out."""
    if job(engine, job_id).status == conv.PENDING:
        submission.submit(job_id, engine)
    for _ in range(max_polls):
        if job(engine, job_id).status in conv.TERMINAL:
            break
        polling.poll(job_id, engine)
    return job(engine, job_id)


def transit_total(engine) -> int:
    return sum(balances(engine, "transit:USD", "transit:USDC").values())


# --- a fake HTTP provider ----------------------------------------------------------------

class FakeHttpProvider:
    """A provider's HTTP API on 127.0.0.1 (http.server in a thread), scriptable.

    ``script`` lists how the next POSTs are answered: ``ok``, ``500``, ``503``, ``422``,
    ``slow`` (the order is taken, the answer comes after ``slow_s``).  Orders finish
    after ``polls_to_finish`` status reads, as ``finish_as`` (``completed``/``failed``).
    """

    def __init__(self, *, rate_ppm: int = 1_000_000, fee_bps: int = 0, polls_to_finish: int = 1,
                 finish_as: str = "completed", slow_s: float = 1.5) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from domain.conversions import quote

        self.rate_ppm, self.fee_bps = rate_ppm, fee_bps
        self.polls_to_finish, self.finish_as, self.slow_s = polls_to_finish, finish_as, slow_s
        self.script: list[str] = []
        self.orders: dict[str, dict] = {}
        self.posts: list[tuple[str, str]] = []  # (header key, body key)
        self.status_words: dict[str, str] = {}  # key -> word to answer instead
        self.healthy = True
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = doc["idempotency_key"]
                with lock:
                    fake.posts.append((self.headers.get("Idempotency-Key"), key))
                    how = fake.script.pop(0) if fake.script else "ok"
                    if how in ("500", "503"):
                        return self._send(int(how), {"error": "try later"})
                    if how == "422":
                        return self._send(422, {"error": "amount not supported"})
                    q = quote(doc["source_amount"], doc["direction"], fake.rate_ppm, fake.fee_bps)
                    order = fake.orders.setdefault(key, {"order_id": f"ord-{len(fake.orders) + 1}",
                                                         "reads": 0, "net": q.net, "fee": q.fee})
                if how == "slow":
                    import time
                    time.sleep(fake.slow_s)
                self._send(201, {"order_id": order["order_id"], "status": "accepted"})

            def do_GET(self):
                if self.path == "/health":
                    return self._send(200 if fake.healthy else 503, {})
                key = self.path.rsplit("/", 1)[-1]
                with lock:
                    order = fake.orders.get(key)
                    if order is None:
                        return self._send(404, {"error": "no such order"})
                    order["reads"] += 1
                    done = order["reads"] >= fake.polls_to_finish
                    word = fake.status_words.get(key) or (fake.finish_as if done else "processing")
                doc = {"order_id": order["order_id"], "status": word}
                if word in ("completed", "settled"):
                    doc.update(destination_amount=order["net"], fee_amount=order["fee"],
                               rate_ppm=fake.rate_ppm)
                self._send(200, doc)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (for 'connection refused')."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
