"""The engine's levers through real workers, RabbitMQ and PostgreSQL: freeze/thaw, a job's own
polls, health probes, and provider callbacks through the real ``ballast callbacks serve``."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import pytest
from sqlalchemy import text

from domain import conversions as conv
from infra.providers import callbacks as signing
from infra.providers.http import make_config as http_config
from infra.treasury import store, views
from tests.steps import polling, submission, levers
from infra.uow import UnitOfWork
from tests.harness import ROOT, send, uid, wait_quiet, wait_until
from tests.infra.test_treasury_kit import (
    FakeHttpProvider, add_provider, attempts, balance, cycle_now, free_port, job, ledger_check,
    reset, sim, transit_total, usd, usdc,
)

pytestmark = pytest.mark.e2e

USDC_BUF = "buffer:system_buffer_usdc"


def last_job_id(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COALESCE(max(id), 0) FROM conversion_jobs")).scalar_one()


def jobs_since(engine, since: int) -> list[int]:
    with engine.connect() as conn:
        return [r.id for r in conn.execute(text("SELECT id FROM conversion_jobs WHERE id > :s "
                                                "ORDER BY id"), {"s": since})]


def lever(engine, fn, **kw):
    with UnitOfWork(actor="t", request_id=uid(), engine=engine) as uow:
        out = fn(uow, **kw)
        uow.commit()
    return out


def test_freeze_stops_jobs_and_submissions_and_thaw_lets_the_job_poll_itself_to_completion(
        env, engine, worker):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    add_provider(engine, config=sim(latency_polls=3))
    since = last_job_id(engine)
    lever(engine, levers.freeze, by="alice", reason="provider incident")
    try:
        send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
        with engine.begin() as conn:  # a job left pending from before the freeze
            pending = store.insert_job(conn, kind="manual", direction="USD->USDC",
                                       source_type="broker_operational",
                                       destination_type="system_buffer_usdc", amount=usd(1_000),
                                       requested_by="ops", trigger="manual")
        send(env, "submit_conversion", request_id=uid("submit"), job_id=pending)
        wait_quiet(env)
        assert jobs_since(engine, since) == [pending]  # the cycle created nothing
        assert job(engine, pending).status == conv.PENDING and attempts(engine, pending) == []
    finally:
        thawed = lever(engine, levers.thaw, by="bob")
    assert thawed["pending_resubmitted"] == 1
    # no sweep poll is ever sent: the job's own polls (2 s, 4 s, 8 s) finish it
    wait_until(lambda: job(engine, pending).status == conv.COMPLETED, 60,
               what="the job's own polls to complete it")
    with engine.connect() as conn:
        polls = conn.execute(text("SELECT count(*) FROM outbox WHERE kind = 'message' AND "
                                  "body->>'actor_name' = 'poll_conversion' AND "
                                  "(body->'kwargs'->>'job_id')::bigint = :j"),
                             {"j": pending}).scalar_one()
    assert polls == 3  # submission's first, then one per poll until it completed
    assert balance(engine, "buffer:broker_operational") == usd(249_000)
    assert transit_total(engine) == 0
    assert ledger_check(engine)["ok"]


def test_the_scheduler_s_probe_keeps_a_down_provider_out_of_selection(env, engine, worker):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    down = add_provider(engine, priority=1, config=sim(fail_mode="timeout"))
    up = add_provider(engine, priority=2)
    send(env, "probe_providers", request_id=uid("probe"))

    def probed():
        with engine.connect() as conn:
            rows = {r["name"]: r for r in views.providers(conn)}
        return rows if rows[down]["probe"] and rows[up]["probe"] else None

    rows = wait_until(probed, what="the probe")
    assert (rows[down]["probe"], rows[down]["healthy"]) == ("down", False)
    assert (rows[up]["probe"], rows[up]["healthy"]) == ("up", True)
    since = last_job_id(engine)
    send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
    [job_id] = wait_until(lambda: jobs_since(engine, since), what="a job")
    wait_until(lambda: job(engine, job_id).status == conv.COMPLETED, 60, what="completion")
    assert [a.provider for a in attempts(engine, job_id)] == [up]  # never even tried `down`
    assert ledger_check(engine)["ok"]


@pytest.fixture
def callback_server(env):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli.main", "callbacks", "serve",
                             "--port", str(port)], cwd=ROOT, env=env.environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(base + "/health", timeout=1).status_code == 200, 30,
                   what="the callback server")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def with_secret(engine, name: str) -> str:
    secret = uid("secret") * 2
    with engine.begin() as conn:
        store.set_callback_secret(conn, name, secret)
    return secret


def test_a_signed_callback_drives_the_job_and_stale_forged_or_replayed_ones_are_refused(
        env, engine, worker, callback_server):
    reset(engine, usdc_buffer=usdc(5_000), fiat=usd(150_000), broker=usd(250_000))
    name = add_provider(engine, config=sim(latency_polls=1000, rate_ppm=999_500))
    secret = with_secret(engine, name)
    url = f"{callback_server}/callbacks/{name}"
    since = last_job_id(engine)
    send(env, "run_settlement_cycle", request_id=uid("cycle"), trigger="manual")
    [job_id] = wait_until(lambda: jobs_since(engine, since), what="a job")
    wait_until(lambda: job(engine, job_id).status in conv.WITH_PROVIDER, what="submission")
    [a] = attempts(engine, job_id)
    doc = {"idempotency_key": a.idempotency_key, "status": "processing"}

    body, headers = signing.signed_request(secret, doc)
    assert httpx.post(url, content=body, headers={**headers, signing.SIGNATURE_HEADER: "0" * 64}
                      ).status_code == 401  # forged
    old_body, old_headers = signing.signed_request(secret, doc, timestamp=1_000_000_000)
    stale = httpx.post(url, content=old_body, headers=old_headers)
    assert stale.status_code == 401 and "stale" in stale.json()["error"]
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    assert httpx.post(url, content=body, headers=headers).status_code == 409  # replayed
    wrong = httpx.post(f"{callback_server}/callbacks/{add_provider(engine, status='paused')}",
                       content=body, headers=headers)
    assert wrong.status_code == 404  # a provider without a secret sends no callbacks

    # The provider's callback for the finished order, sent while its book still says
    # processing: no poll of the worker can finish the job first, so the callback must.
    q = conv.quote(usd(60_000), "USD->USDC", 999_500, 0)
    answer = signing.send(url, secret, {
        "idempotency_key": a.idempotency_key, "status": "completed",
        "order_id": f"sim-{name}-{a.idempotency_key}", "destination_amount": q.net,
        "fee_amount": q.fee, "rate_ppm": 999_500})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job_id": job_id, "status": "completed", "applied": True}
    done = job(engine, job_id)
    assert done.destination_amount == conv.quote(usd(60_000), "USD->USDC", 999_500, 0).net
    assert balance(engine, USDC_BUF) == usdc(5_000) + done.destination_amount
    assert transit_total(engine) == 0
    assert ledger_check(engine)["ok"]


def test_a_callback_and_a_poll_arriving_together_change_the_job_once(env, engine, clean_queues,
                                                                    callback_server):
    reset(engine, usdc_buffer=usdc(60_000), fiat=usd(10_000), broker=usd(250_000))
    fake = FakeHttpProvider(fee_bps=20, polls_to_finish=1)
    try:
        name = add_provider(engine, kind="http", config=http_config(fake.url, timeout_ms=2_000))
        secret = with_secret(engine, name)
        # No worker: nothing but the two racers below touches the job once it is submitted.
        [job_id] = cycle_now(engine)
        submission.submit(job_id, engine)
        assert job(engine, job_id).status == conv.SUBMITTED
        [a] = attempts(engine, job_id)
        order = fake.orders[a.idempotency_key]
        doc = {"idempotency_key": a.idempotency_key, "status": "settled",
               "order_id": order["order_id"], "destination_amount": order["net"],
               "fee_amount": order["fee"]}
        go = threading.Barrier(2)
        answers: list = []

        def callback():
            go.wait()
            answers.append(signing.send(f"{callback_server}/callbacks/{name}", secret, doc))

        def poll():
            go.wait()
            polling.poll(job_id, engine)

        threads = [threading.Thread(target=callback), threading.Thread(target=poll)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        fake.close()
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    done = job(engine, job_id)
    assert (done.status, done.destination_amount, done.fee_amount) == (
        conv.COMPLETED, order["net"], order["fee"])
    with engine.connect() as conn:
        trail = [t["to"] for t in store.transitions(conn, job_id)]
        conversions = conn.execute(text(
            "SELECT count(*) FROM ledger_transactions WHERE kind = 'conversion' AND "
            "(metadata->>'job_id')::bigint = :j"), {"j": job_id}).scalar_one()
    assert trail.count(conv.COMPLETED) == 1 and conversions == 1
    assert balance(engine, "buffer:system_buffer_fiat") == usd(10_000) + order["net"]
    assert ledger_check(engine)["ok"]
