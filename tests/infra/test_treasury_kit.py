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
from infra.treasury import cycle, jobs, store
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
        jobs.cancel(job.id, by="test", reason="reset", force=True, engine=engine)
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
        jobs.submit(job_id, engine)
    for _ in range(max_polls):
        if job(engine, job_id).status in conv.TERMINAL:
            break
        jobs.poll(job_id, engine)
    return job(engine, job_id)


def transit_total(engine) -> int:
    return sum(balances(engine, "transit:USD", "transit:USDC").values())
