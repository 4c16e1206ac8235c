"""One chaos run: own services, workers and a scheduler, the workload, the seeded faults,
quiesce, the invariants, the figures.  ``python -m tests.chaos.run --seed S --duration 10m``
(or ``bench/chaos``) prints the seed, a summary table and one JSON line; exit 1 when an
invariant fails."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from tests import harness
from tests.chaos import checks, schedule, workload
from tests.chaos.sender import EventLog, Sender
from tests.chaos.services import OwnServices

MAX_FLOWS = 6  # flows in flight at once (besides the one conversion flow)
CANARIES = 16  # deposits sent after the last fault: every thread of every worker still works
RECOVERY_TIMEOUT_S = 180.0  # s for workers to consume again after a fault
QUIET_TIMEOUT_S = 400.0  # s to quiesce after the workload
THREADS = 4  # per worker process


@dataclass
class Figures:
    seed: int
    duration_s: float
    messages: int = 0  # commands sent (signed, confirmed)
    malformed: int = 0  # malformed envelopes published raw
    republished: int = 0  # publishes repeated through an outage
    faults: Counter = field(default_factory=Counter)
    recoveries: Counter = field(default_factory=Counter)
    lost: int = 0
    doubled: int = 0
    ok: bool = False
    problems: dict[str, list[str]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"chaos": "ballast", "seed": self.seed, "duration_s": self.duration_s,
                "messages": self.messages, "malformed": self.malformed,
                "republished": self.republished, "faults": dict(self.faults),
                "faults_total": sum(self.faults.values()), "recoveries": dict(self.recoveries),
                "recoveries_total": sum(self.recoveries.values()), "lost": self.lost,
                "doubled": self.doubled, "ok": self.ok, "elapsed_s": round(self.elapsed_s, 1),
                **self.facts, "problems": {k: v[:10] for k, v in self.problems.items() if v}}

    def table(self) -> str:
        rows = [("seed", self.seed), ("duration", f"{self.duration_s:.0f} s workload, "
                                                  f"{self.elapsed_s:.0f} s in all"),
                ("messages sent", f"{self.messages} commands + {self.malformed} malformed "
                                  f"({self.republished} publishes repeated through outages)")]
        rows += [(f"fault: {k}", n) for k, n in sorted(self.faults.items())]
        rows += [(f"recovered: {k}", n) for k, n in sorted(self.recoveries.items())]
        rows += [(k.replace("_", " "), v) for k, v in self.facts.items()]
        rows += [("lost", self.lost), ("doubled", self.doubled),
                 ("invariants", "all hold" if self.ok else "FAILED")]
        for check, problems in self.problems.items():
            rows.append((f"check {check}", "ok" if not problems else f"{len(problems)} problem(s)"))
            rows += [("", f"  {p}") for p in problems[:10]]
        width = max(len(str(k)) for k, _ in rows)
        return "\n".join(f"{str(k):<{width}}  {v}" for k, v in rows)


def malformed_body(case: str, marker: str) -> tuple[str, bytes]:
    """(queue, raw bytes) of one malformed envelope of ``case`` carrying ``marker``."""
    body = dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                            kwargs={"request_id": marker, "user_id": workload.uid("x"),
                                    "currency": "NGN", "amount": 100, "reference": "bank"},
                            options={}).asdict()
    body["args"] = []
    raw = {
        "not_json": f"this is not json {marker}".encode(),
        "not_utf8": b"\xff\xfe not utf-8 " + marker.encode(),
        "json_list": json.dumps([marker, "list"]).encode(),
        "nan": b'{"queue_name": "ballast.wallets", "' + marker.encode() + b'": NaN}',
    }.get(case)
    if raw is not None:
        return "ballast.wallets", raw
    change = {
        "options_list": {"options": ["a"]}, "options_string": {"options": "retries"},
        "option_throws": {"options": {"throws": "ValueError"}},
        "queue_nobody_consumes": {"queue_name": "ballast.nowhere"},
        "actor_name_list": {"actor_name": ["deposit"]}, "actor_name_number": {"actor_name": 7},
        "unknown_actor": {"actor_name": "steal_everything"},
        "actor_of_another_queue": {"actor_name": "open_market"},
        "message_id_number": {"message_id": 12345},
        "timestamp_string": {"message_timestamp": "now"},
        "kwargs_list": {"kwargs": ["request_id", marker]}, "field_too_many": {"priority": 1},
    }.get(case)
    if case == "nul_in_text":
        body["kwargs"]["reference"] = "bank\x00transfer"
    elif change is None:
        raise ValueError(case)
    else:
        body.update(change)
    return "ballast.wallets", json.dumps(body).encode()


class ChaosRun:
    """Parameters: seed, duration_s (of the workload; quiescing and checks come after),
    log (a callable for progress lines)."""

    def __init__(self, seed: int, duration_s: float, log=None) -> None:
        self.seed = seed
        self.duration_s = duration_s
        self.log = log or (lambda line: None)
        self.run_id = uuid.uuid4().hex[:6]
        self.fig = Figures(seed, duration_s)
        self.model = workload.Model()
        self.faults = schedule.fault_schedule(seed, duration_s)
        self.workers: list[harness.Worker] = []
        self.handled: set[int] = set()  # workers a fault is restarting right now
        self.scheduler: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._errors: list[str] = []

    # --- set-up ----------------------------------------------------------------------
    def _env(self, svc: OwnServices) -> harness.TestEnv:
        import tempfile

        env = harness.TestEnv(
            self.run_id, svc.pg.url, svc.rabbit.url, svc.redis.url, "/",
            tempfile.mkdtemp(prefix="faults-", dir=svc.base),
            # No management API on the own node: nothing may fall back to the shared one.
            extra={"BALLAST_RABBITMQ_API_URL": f"http://127.0.0.1:{svc.rabbit.port}/no-api",
                   "BALLAST_RETRY_MAX_BACKOFF_MS": "5000", "BALLAST_LOG_LEVEL": "WARNING"})
        from infra.db.migrate import upgrade

        upgrade(env.database_url)
        harness._make_keys(env)
        return env

    def _prepare(self, env: harness.TestEnv) -> None:
        from infra.broker import build_broker
        from infra.contract import QUEUES
        from tests.infra.test_treasury_kit import add_provider, reset, sim

        broker = build_broker(env.broker_url)
        try:
            for q in QUEUES:
                broker.declare_queue(q, ensure=True)
        finally:
            broker.close()
        engine = self.engine
        start = workload.BUFFER_START
        reset(engine, usdc_buffer=start["system_buffer_usdc"], fiat=start["system_buffer_fiat"],
              broker=start["broker_operational"])
        add_provider(engine, config=sim(latency_polls=1), name=f"chaos-sim-{self.run_id}")

    def _start_scheduler(self) -> None:
        log = open(os.path.join(self.env.fault_dir, "scheduler.log"), "ab")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "infra.cli.main", "scheduler"], cwd=harness.ROOT,
            env=self.env.environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    # --- faults ----------------------------------------------------------------------
    def _consuming(self) -> bool:
        from infra import rabbit

        rows = {r["queue"]: r for r in rabbit.queue_stats(self.env.broker_url)}
        return rows["ballast.wallets"]["consumers"] >= len(self.workers)

    def _recover_workers(self, why: str) -> None:
        harness.wait_until(self._consuming, RECOVERY_TIMEOUT_S, 0.5,
                           what=f"every worker to consume again after {why}")

    def _restart(self, i: int, kind: str, **extra: str) -> None:
        w = self.workers[i]
        self.handled.add(i)
        try:
            w.kill()
            w.extra_env.update(extra)
            w.start(wait=False)
            w.wait_ready(RECOVERY_TIMEOUT_S)
            self.fig.recoveries[kind] += 1
        finally:
            self.handled.discard(i)

    def _inject(self, f: schedule.Fault) -> None:
        d = f.detail
        self.log(f"fault at {f.at_s:6.1f}s: {f.kind} {d}")
        if f.kind == "kill_worker":
            self._restart(d["worker"], "worker_killed")
        elif f.kind == "arm_point":
            w = self.workers[d["worker"]]
            armed = [p for p in w.extra_env.get("BALLAST_FAULTS", "").split(",") if p]
            self._restart(d["worker"], "worker_restarted_armed",
                          BALLAST_FAULTS=",".join([*armed, d["point"]]))
        elif f.kind == "broker_restart":
            self.svc.rabbit.stop(kill=d["mode"] == "kill")
            time.sleep(d["down_s"])
            self.svc.rabbit.start()
            self._recover_workers("the broker restart")
            self.fig.recoveries["broker_restart"] += 1
        elif f.kind == "db_restart":
            self.svc.pg.stop(d["mode"])
            time.sleep(d["down_s"])
            self.svc.pg.start()
            self.fig.recoveries["db_restart"] += 1
        elif f.kind == "malformed_burst":
            for case in d["cases"]:
                marker = f"chaos-poison-{uuid.uuid4().hex[:12]}"
                queue, raw = malformed_body(case, marker)
                self.sender.publish(queue, raw)
                self.model.malformed[marker] = case
                self.fig.malformed += 1
        self.fig.faults[f.kind] += 1

    def _supervise(self) -> None:
        """Restart a worker that killed itself at an armed point (or died of anything);
        restart the scheduler if it exits."""
        for i, w in enumerate(self.workers):
            if i not in self.handled and w.proc is not None and not w.alive:
                self.handled.add(i)
                try:
                    w._reap()
                    w.start(wait=False)
                    w.wait_ready(RECOVERY_TIMEOUT_S)
                    self.fig.recoveries["worker_died_at_point"] += 1
                finally:
                    self.handled.discard(i)
        if self.scheduler is not None and self.scheduler.poll() is not None:
            self.fig.facts["scheduler_exits"] = self.fig.facts.get("scheduler_exits", 0) + 1
            self._start_scheduler()

    def _fault_loop(self) -> None:
        try:
            for f in self.faults:
                while time.monotonic() - self.t0 < f.at_s:
                    if self._stop.wait(0.3):
                        return
                    self._supervise()
                self._inject(f)
            while not self._stop.wait(0.3):
                self._supervise()
        except Exception as exc:  # noqa: BLE001 — reported as a failed run
            self._errors.append(f"fault loop: {type(exc).__name__}: {exc}")

    # --- the workload ----------------------------------------------------------------
    def _send(self, s: workload.Send) -> None:
        kwargs = s.kwargs() if callable(s.kwargs) else s.kwargs
        if kwargs is None:
            return
        self.sender.send(s.actor, **kwargs)
        self.model.messages += 1
        key = (s.actor, kwargs["request_id"])
        if s.expect == "applied":
            self.model.applied.add(key)
            if s.actor == "record_buffer_flow":
                a = kwargs["account_type"]
                self.model.buffer_flows[a] = self.model.buffer_flows.get(a, 0) + kwargs["amount"]
        elif s.expect == "refused":
            self.model.refused[key] = s.reason

    def _advance(self, flow: dict[str, Any]) -> bool:
        """Run ``flow`` until it waits on something not yet true; False when it is over."""
        while True:
            wait = flow.get("wait")
            if wait is not None:
                try:
                    ready = wait.predicate()
                except Exception:
                    ready = False
                if not ready:
                    if time.monotonic() - flow["since"] > workload.WAIT_TIMEOUT_S:
                        self.log(f"stuck: {wait.what}")
                        self.model.stuck.append(wait.what)
                        return False
                    return True
                flow["wait"] = None
            try:
                step = next(flow["gen"])
            except StopIteration:
                self.model.flows_done[flow["name"]] = self.model.flows_done.get(flow["name"], 0) + 1
                return False
            if isinstance(step, workload.Send):
                self._send(step)
            else:
                flow["wait"], flow["since"] = step, time.monotonic()

    def _workload(self) -> None:
        rng = random.Random(f"ballast-chaos-workload:{self.seed}")
        rd = workload.Reader(self.engine)
        names = list(workload.FLOWS)
        weights = [workload.FLOWS[n][1] for n in names]
        flows: list[dict[str, Any]] = []
        end = self.t0 + self.duration_s
        canaries_sent = False
        while True:
            now = time.monotonic()
            if now < end:
                while sum(f["name"] != "conversion" for f in flows) < MAX_FLOWS:
                    name = rng.choices(names, weights)[0]
                    gen = workload.FLOWS[name][0](self.model, rd, random.Random(rng.random()))
                    flows.append({"name": name, "gen": gen})
                if not any(f["name"] == "conversion" for f in flows):
                    gen = workload.conversion_flow(self.model, rd, random.Random(rng.random()))
                    flows.append({"name": "conversion", "gen": gen})
            elif not canaries_sent and self.fault_thread is not None and not self.fault_thread.is_alive():
                for _ in range(CANARIES):
                    self._send(workload.Send("deposit", dict(
                        request_id=workload.uid("canary"), user_id=(u := workload.uid("k")),
                        currency="NGN", amount=777, reference="canary")))
                    self.model.credit(f"user:{u}:NGN", 777)
                canaries_sent = True
            flows = [f for f in flows if self._advance(f)]
            if now >= end and not flows and canaries_sent:
                return
            if now >= end and self.fault_thread is not None and self.fault_thread.is_alive():
                self._stop.set()  # faults scheduled past the end are not injected
            time.sleep(0.1)

    # --- the whole run -------------------------------------------------------------------
    def run(self) -> Figures:
        from infra.db.engine import dispose_engines, get_engine
        from infra.settings import get_settings

        import logging

        logging.getLogger("pika").setLevel(logging.CRITICAL)  # outages are the point here
        started = time.monotonic()
        saved = {k: v for k, v in os.environ.items() if k.startswith("BALLAST_")}
        self.svc = OwnServices(self.run_id).start()
        self.fault_thread = None
        events = None
        try:
            self.log(f"chaos seed {self.seed}: own PostgreSQL :{self.svc.pg.port}, RabbitMQ "
                     f"{self.svc.rabbit.node} :{self.svc.rabbit.port}, Redis :{self.svc.redis.port}")
            self.env = self._env(self.svc)
            harness.activate(self.env)
            self.engine = get_engine(self.env.database_url)
            self._prepare(self.env)
            self.sender = Sender(self.env)
            events = EventLog(self.env).start()
            self.workers = [harness.Worker(self.env, processes=1, threads=THREADS)
                            for _ in range(schedule.WORKERS)]
            for w in self.workers:
                w.start()
            self._start_scheduler()
            self.log(f"{len(self.faults)} faults scheduled: "
                     + ", ".join(f"{f.at_s:.0f}s {f.kind}" for f in self.faults))
            self.t0 = time.monotonic()
            self.fault_thread = threading.Thread(target=self._fault_loop, daemon=True)
            self.fault_thread.start()
            self._workload()
            self.log(f"workload done at {time.monotonic() - self.t0:.0f}s")
            self._stop.set()
            self.fault_thread.join(timeout=RECOVERY_TIMEOUT_S * 2)
            self.log("workload over: quiescing")
            harness.wait_quiet(self.env, timeout=QUIET_TIMEOUT_S, settle=3.0, outbox=True)
            harness.wait_until(lambda: self._events_drained(), 120, 0.5, what="the events")
            events.stop()
            self.log("checking the invariants")
            verdict = checks.check(self.model, self.env, self.engine, events.ids,
                                   [w.log() for w in self.workers])
            self.fig.facts["checker_self_test"] = self._self_test(events.ids)
            for e in self._errors:
                verdict.add("run", e)
            self.fig.messages = self.model.messages
            self.fig.republished = self.sender.republished
            self.fig.lost, self.fig.doubled = verdict.lost, verdict.doubled
            self.fig.problems = verdict.problems
            self.fig.facts.update(verdict.facts)
            self.fig.facts["flows"] = dict(self.model.flows_done)
            self.fig.facts["events_reconnects"] = events.reconnects
            if verdict.facts.get("threads_replaced"):
                self.fig.recoveries["threads_replaced"] += verdict.facts["threads_replaced"]
            self.fig.ok = verdict.ok
            return self.fig
        finally:
            self._stop.set()
            if events is not None:
                events.stop()
            for w in self.workers:
                w.stop()
            if self.scheduler is not None and self.scheduler.poll() is None:
                os.killpg(self.scheduler.pid, signal.SIGTERM)
                try:
                    self.scheduler.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.scheduler.pid, signal.SIGKILL)
            if getattr(self, "sender", None):
                self.sender.close()
            dispose_engines()
            keep = os.getenv("BALLAST_CHAOS_KEEP") == "1"
            self.svc.stop(keep=keep)
            for k in [k for k in os.environ if k.startswith("BALLAST_")]:
                del os.environ[k]
            os.environ.update(saved)
            get_settings.cache_clear()
            self.fig.elapsed_s = time.monotonic() - started

    def _self_test(self, event_ids: list[str]) -> str:
        """The checker is not blind: the same data against a model that expects one effect
        nobody sent and one wallet a unit richer must fail with one lost and one doubled."""
        import copy

        m = copy.deepcopy(self.model)
        m.applied.add(("deposit", "chaos-self-test-never-sent"))
        code = next(iter(sorted(m.balances)), None)
        if code is not None:
            m.balances[code] -= 1  # the database now holds one unit more than "expected"
        v = checks.check(m, self.env, self.engine, event_ids, [])
        caught = (not v.ok and v.problems["effects"] and v.lost >= 1
                  and (code is None or v.doubled >= 1))
        return "caught" if caught else f"MISSED: {v.problems}"

    def _events_drained(self) -> bool:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.env.broker_url))
        try:
            return conn.channel().queue_declare(EventLog.QUEUE, passive=True).method.message_count == 0
        finally:
            conn.close()


def parse_duration(text_: str) -> float:
    text_ = text_.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text_.endswith(suffix) and text_[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(text_[:-len(suffix)]) * factor
    return float(text_)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/chaos", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (random if unset)")
    ap.add_argument("--duration", default="10m", help="the workload's length: 90s, 10m, 1h")
    ap.add_argument("--schedule", action="store_true", help="print the fault schedule and exit")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    duration = parse_duration(args.duration)
    print(f"chaos seed: {seed}", flush=True)
    if args.schedule:
        for f in schedule.fault_schedule(seed, duration):
            print(json.dumps(f.as_dict()))
        return 0
    run = ChaosRun(seed, duration, log=lambda line: print(line, file=sys.stderr, flush=True))
    fig = run.run()
    print(fig.table())
    print(json.dumps(fig.as_dict(), default=str))
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())
