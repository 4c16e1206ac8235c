"""The gauges an operator graphs, read from PostgreSQL and Redis at scrape time.

``BallastCollector`` is a Prometheus collector served by the scheduler (``/metrics`` on
``BALLAST_SCHEDULER_METRICS_PORT``).  Every scrape runs a handful of small queries (a
statement timeout bounds them) and yields, with the label scheme of the workers' metrics:

==============================================================  ==========================
``ballast_database_up``                                          1 when the queries ran
``ballast_buffer_balance{buffer,currency}``                      minor units, and its
``ballast_buffer_min|target|max{buffer,currency}``               thresholds
``ballast_alerts_open{kind,severity,status}``                    open and acknowledged
``ballast_outbox_pending``                                       rows not yet published
``ballast_outbox_oldest_pending_age_seconds``                    0 when none
``ballast_dead_letters_open{queue}``                             durable log, not replayed
                                                                 or purged
``ballast_conversion_jobs_active{status}``                       pending, with the provider
``ballast_conversion_jobs_stale``                                flagged stale, still active
``ballast_conversion_duration_seconds{direction,outcome}``       histogram, created to
                                                                 finished
``ballast_redis_up``                                             1 when Redis answered
``ballast_schedule_last_fired_timestamp_seconds{schedule}``      the shared last slot fired
``ballast_schedule_period_seconds{schedule}``                    86400 for a daily one
``ballast_scheduler_heartbeat_timestamp_seconds``                this scheduler's last tick
``ballast_scheduler_lease_held``                                 1 on the one that fires
==============================================================  ==========================

Families are always declared, so a dashboard or rule names nothing that is not there; a
family whose source is down is empty and ``ballast_database_up``/``ballast_redis_up`` say 0.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import (ARRAY, Text, any_, bindparam, case, extract, func, literal, literal_column,
                        select, text)

from infra.db.tables import accounts, alerts as alerts_t, conversion_jobs, dead_letters
from infra.db.tables import outbox as outbox_t
from infra.db.tables import treasury_buffers

from infra.contract import QUEUES
from infra.logs import get_logger
from schedules.keys import last_fired
from schedules.table import SCHEDULES

log = get_logger(__name__)

#: Upper bounds (s) of the conversion duration histogram: minutes to a day.
CONVERSION_BUCKETS = (30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
STATEMENT_TIMEOUT_MS = 5000
ACTIVE_JOB_STATUSES = ("pending", "provider_submitted", "provider_processing")

# --- the statements of one scrape, built once -------------------------------------------

SET_STATEMENT_TIMEOUT = text(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")

_b, _a = treasury_buffers.c, accounts.c
BUFFERS = (
    select(_b.account_type, _b.currency, _b.min_amount, _b.target_amount, _b.max_amount,
           func.coalesce(_a.balance, 0).label("balance"))
    .select_from(treasury_buffers.outerjoin(
        accounts, _a.code == literal("buffer:", Text) + _b.account_type))
    .order_by(_b.account_type))

_al = alerts_t.c
ALERTS_OPEN = (
    select(_al.kind, _al.severity, _al.status, func.count().label("n"))
    .where(_al.status.in_(("open", "acknowledged")))
    .group_by(_al.kind, _al.severity, _al.status)
    .order_by(_al.kind, _al.severity, _al.status))

_o = outbox_t.c
OUTBOX_BACKLOG = (
    select(func.count().label("n"),
           func.coalesce(extract("epoch", func.now() - func.min(_o.created_at)), 0).label("age"))
    .where(_o.published_at.is_(None)))

_dl = dead_letters.c
DEAD_LETTERS_BY_QUEUE = (
    select(_dl.queue, func.count().label("n"))
    .where(_dl.status == literal_column("'dead'"))  # in the statement: the partial index's
    .group_by(_dl.queue))

_j = conversion_jobs.c
ACTIVE_JOBS = (
    select(_j.status, func.count().label("n"),
           func.count().filter(_j.stale_at.is_not(None)).label("s"))
    .where(_j.status == any_(bindparam("st", list(ACTIVE_JOB_STATUSES), type_=ARRAY(Text))))
    .group_by(_j.status))

_finished = (
    select(_j.direction,
           case((_j.status == literal_column("'completed'"), literal_column("'completed'")),
                else_=literal_column("'failed'")).label("outcome"),
           extract("epoch", _j.finished_at - _j.created_at).label("d"))
    .where(_j.status.in_(("completed", "failed")), _j.finished_at.is_not(None))
    .subquery("j"))
#: Finished conversions per direction and outcome: count, total seconds, and the count
#: at or under each bucket (the buckets are constants of the statement, not parameters).
CONVERSION_DURATIONS = (
    select(_finished.c.direction, _finished.c.outcome, func.count().label("n"),
           func.coalesce(func.sum(_finished.c.d), 0).label("total"),
           *(func.count().filter(_finished.c.d <= literal_column(str(b))).label(f"le_{i}")
             for i, b in enumerate(CONVERSION_BUCKETS)))
    .group_by(_finished.c.direction, _finished.c.outcome)
    .order_by(_finished.c.direction, _finished.c.outcome))


class BallastCollector:
    """Parameters:
      engine: SQLAlchemy engine of the system of record.
      redis_client: the scheduler's Redis (last firings), or None.
      scheduler: the running ``schedules.runner.Scheduler`` (heartbeat, lease), or None.
      schedules: the schedule table (default: schedules.table.SCHEDULES).
    """

    def __init__(self, engine, redis_client=None, scheduler=None, schedules=None) -> None:
        self.engine = engine
        self.redis = redis_client
        self.scheduler = scheduler
        self.schedules = SCHEDULES if schedules is None else schedules

    def describe(self):
        return []  # collected at scrape time only (no query when registered)

    def collect(self) -> Iterable[Any]:
        yield from self._database()
        yield from self._schedules()

    # --- PostgreSQL -----------------------------------------------------------------

    @staticmethod
    def _database_families() -> dict[str, Any]:
        labels = ["buffer", "currency"]
        f: dict[str, Any] = {
            "balance": GaugeMetricFamily("ballast_buffer_balance", "Buffer balance (minor units)",
                                         labels=labels)}
        for k in ("min", "target", "max"):
            f[k] = GaugeMetricFamily(f"ballast_buffer_{k}", f"Buffer {k} threshold (minor units)",
                                     labels=labels)
        f["alerts"] = GaugeMetricFamily("ballast_alerts_open", "Open (or acknowledged) alerts",
                                        labels=["kind", "severity", "status"])
        f["outbox"] = GaugeMetricFamily("ballast_outbox_pending", "Outbox rows not yet published")
        f["outbox_age"] = GaugeMetricFamily("ballast_outbox_oldest_pending_age_seconds",
                                            "Age of the oldest unpublished outbox row (0: none)")
        f["dead"] = GaugeMetricFamily(
            "ballast_dead_letters_open",
            "Dead letters in the durable log, neither replayed nor purged", labels=["queue"])
        f["active"] = GaugeMetricFamily("ballast_conversion_jobs_active",
                                        "Conversion jobs not finished", labels=["status"])
        f["stale"] = GaugeMetricFamily("ballast_conversion_jobs_stale",
                                       "Active conversion jobs flagged stale (still polled)")
        f["duration"] = HistogramMetricFamily(
            "ballast_conversion_duration_seconds",
            "Conversion jobs from creation to completion or failure",
            labels=["direction", "outcome"])
        return f

    def _database(self):
        up = GaugeMetricFamily("ballast_database_up", "1 when the exporter's queries ran")
        families = self._database_families()
        try:
            with self.engine.connect() as conn:
                conn.execute(SET_STATEMENT_TIMEOUT)
                self._query(conn, families)
                conn.rollback()
            up.add_metric([], 1)
        except Exception as exc:
            log.warning("metrics.database_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            families = self._database_families()  # declared, empty
            up.add_metric([], 0)
        yield up
        yield from families.values()

    @staticmethod
    def _query(conn, f: dict[str, Any]) -> None:
        bal, alerts, outbox, outbox_age = f["balance"], f["alerts"], f["outbox"], f["outbox_age"]
        dead, active, stale, duration = f["dead"], f["active"], f["stale"], f["duration"]
        thresholds = {k: f[k] for k in ("min", "target", "max")}

        for r in conn.execute(BUFFERS):
            labels = [r.account_type, r.currency]
            bal.add_metric(labels, int(r.balance))
            thresholds["min"].add_metric(labels, int(r.min_amount))
            thresholds["target"].add_metric(labels, int(r.target_amount))
            thresholds["max"].add_metric(labels, int(r.max_amount))
        for r in conn.execute(ALERTS_OPEN):
            alerts.add_metric([r.kind, r.severity, r.status], r.n)
        r = conn.execute(OUTBOX_BACKLOG).one()
        outbox.add_metric([], r.n)
        outbox_age.add_metric([], max(0.0, float(r.age)))
        counts = {q: 0 for q in QUEUES}
        for r in conn.execute(DEAD_LETTERS_BY_QUEUE):
            counts[r.queue] = r.n
        for queue, n in sorted(counts.items()):
            dead.add_metric([queue], n)
        by_status = {s: 0 for s in ACTIVE_JOB_STATUSES}
        n_stale = 0
        for r in conn.execute(ACTIVE_JOBS):
            by_status[r.status] = r.n
            n_stale += r.s
        for status, n in by_status.items():
            active.add_metric([status], n)
        stale.add_metric([], n_stale)
        for r in conn.execute(CONVERSION_DURATIONS):
            buckets = [(str(float(b)), getattr(r, f"le_{i}"))
                       for i, b in enumerate(CONVERSION_BUCKETS)]
            buckets.append(("+Inf", r.n))
            duration.add_metric([r.direction, r.outcome], buckets, float(r.total))

    # --- Redis and this scheduler ----------------------------------------------------

    def _schedules(self):
        redis_up = GaugeMetricFamily("ballast_redis_up", "1 when Redis answered")
        last = GaugeMetricFamily("ballast_schedule_last_fired_timestamp_seconds",
                                 "Slot (Unix time) each schedule last fired, by any scheduler",
                                 labels=["schedule"])
        period = GaugeMetricFamily("ballast_schedule_period_seconds",
                                   "Period of each schedule", labels=["schedule"])
        for s in self.schedules:
            period.add_metric([s.name], s.every_s or 86_400)
        if self.redis is not None:
            try:
                for name, at in last_fired(self.redis, self.schedules).items():
                    if at is not None:
                        last.add_metric([name], at)
                redis_up.add_metric([], 1)
            except Exception as exc:
                log.warning("metrics.redis_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
                last = GaugeMetricFamily(last.name, last.documentation, labels=["schedule"])
                redis_up.add_metric([], 0)
        yield redis_up
        yield last
        yield period
        beat = GaugeMetricFamily("ballast_scheduler_heartbeat_timestamp_seconds",
                                 "Last completed tick of this scheduler (Unix time)")
        lease = GaugeMetricFamily("ballast_scheduler_lease_held",
                                  "1 when this scheduler holds the lease (fires)")
        if self.scheduler is not None:
            if self.scheduler.last_tick_at is not None:
                beat.add_metric([], self.scheduler.last_tick_at)
            lease.add_metric([], 1 if self.scheduler.leader else 0)
        yield beat
        yield lease


#: The scheduler is unhealthy when it has not completed a tick for this long.
SCHEDULER_STALE_S = 30.0  # s


def scheduler_health(scheduler, now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """``/healthz`` of a scheduler: its loop completed a tick (Redis answered) lately."""
    now = time.time() if now is None else now
    at = scheduler.last_tick_at
    age = None if at is None else round(now - at, 1)
    ok = age is not None and age < SCHEDULER_STALE_S
    return ok, {"service": "scheduler", "status": "ok" if ok else "unhealthy",
                "instance": scheduler.instance_id, "lease_held": scheduler.leader,
                "heartbeat_age_s": age, "stale_after_s": SCHEDULER_STALE_S}
