"""The scheduler process: fire each due slot once, whatever else is running.

Two guards, both in Redis:
- a *lease* (``SET NX PX``, renewed by its holder): only one scheduler fires
  at a time; if it dies, another takes over when the lease expires;
- a *slot claim* per schedule and slot (``SET NX``): even two schedulers that
  both believe they hold the lease cannot fire the same slot twice.

Each schedule remembers its last fired slot, so a scheduler that was down
fires the latest missed slot once, not once per missed slot.  Every firing
carries ``request_id = schedule:{name}:{slot}``: a duplicate is harmless.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable
from zoneinfo import ZoneInfo

import dramatiq
import redis
from prometheus_client import CollectorRegistry

from infra.auth import sign_as_ballast
from infra.broker import build_broker, declare_topology
from infra.contract import parse, spec_for
from infra.db.engine import get_engine
from infra.exporter import BallastCollector, scheduler_health
from infra.logs import configure_logging, get_logger
from infra.metrics_http import bind, serve_in_thread
from infra.settings import get_settings
from schedules.keys import PREFIX, last_key
from schedules.slots import latest_slot, request_id
from schedules.table import SCHEDULES, Schedule

log = get_logger(__name__)

LEASE_MS = 15_000  # ms; renewed every tick
SLOT_CLAIM_TTL_S = 8 * 24 * 3600  # s; longer than the longest schedule period
TICK_S = 1.0  # s

# Renew the lease only if we still hold it (atomic).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Scheduler:
    """Parameters:
      client: Redis client (the db of BALLAST_REDIS_URL).
      publish: sends a dramatiq.Message (confirmed).
      tz: zone of daily slots.
      schedules: the table to fire (default: schedules.table.SCHEDULES).
      instance_id: this scheduler's name in the lease.
    """

    def __init__(self, client: redis.Redis, publish: Callable[[dramatiq.Message], None],
                 tz: ZoneInfo, schedules: list[Schedule] | None = None,
                 instance_id: str | None = None, lease_ms: int = LEASE_MS) -> None:
        self.redis = client
        self.publish = publish
        self.tz = tz
        self.schedules = schedules if schedules is not None else SCHEDULES
        self.instance_id = instance_id or f"sched-{uuid.uuid4().hex[:8]}"
        self.lease_ms = lease_ms
        self._renew = client.register_script(_RENEW)
        #: Unix time of the last tick that reached Redis (the heartbeat), and whether this
        #: scheduler held the lease then.
        self.last_tick_at: float | None = None
        self.leader = False

    def holds_lease(self) -> bool:
        key = PREFIX + "lease"
        if self.redis.set(key, self.instance_id, nx=True, px=self.lease_ms):
            log.info("scheduler.lease_acquired", instance=self.instance_id)
            return True
        return bool(self._renew(keys=[key], args=[self.instance_id, self.lease_ms]))

    def tick(self, now: datetime | None = None) -> list[str]:
        """Fire every schedule whose latest slot has not fired yet. Returns request ids fired."""
        now = now or datetime.now(timezone.utc)
        self.leader = self.holds_lease()
        if not self.leader:
            self.last_tick_at = time.time()
            return []
        fired = []
        for schedule in self.schedules:
            slot = latest_slot(schedule, now, self.tz)
            stamp = int(slot.timestamp())
            last = self.redis.get(last_key(schedule.name))
            if last is not None and int(last) >= stamp:
                continue
            claim = PREFIX + f"slot:{schedule.name}:{stamp}"
            if not self.redis.set(claim, self.instance_id, nx=True, ex=SLOT_CLAIM_TTL_S):
                continue  # another scheduler fired this slot
            rid = request_id(schedule, slot)
            try:
                self.publish(self._message(schedule, slot, rid))
            except Exception as exc:
                self.redis.delete(claim)  # let the next tick try again
                log.error("scheduler.fire_failed", schedule=schedule.name, error=str(exc))
                continue
            self.redis.set(last_key(schedule.name), stamp)
            log.info("scheduler.fired", schedule=schedule.name, actor=schedule.actor, request_id=rid)
            fired.append(rid)
        self.last_tick_at = time.time()
        return fired

    @staticmethod
    def _message(schedule: Schedule, slot: datetime, rid: str) -> dramatiq.Message:
        spec = spec_for(schedule.actor)
        kwargs = {"request_id": rid, **schedule.kwargs(slot)}
        parse(spec.schema, kwargs)  # a schedule that no longer fits its contract fails loudly
        return dramatiq.Message(queue_name=spec.queue, actor_name=schedule.actor, args=(),
                                kwargs=kwargs, options={})

    def release(self) -> None:
        key = PREFIX + "lease"
        if self.redis.get(key) == self.instance_id.encode():
            self.redis.delete(key)


def run_forever(stop: threading.Event | None = None) -> None:
    """Tick every second until SIGTERM/SIGINT (or ``stop`` is set).

    With ``BALLAST_SCHEDULER_METRICS_PORT`` (default 9200; 0: off) it serves ``/metrics``
    (its heartbeat, every schedule's last firing and the database-derived gauges of
    ``infra.exporter``) and ``/healthz`` (200 while its ticks reach Redis)."""
    configure_logging(service="scheduler")
    settings = get_settings()
    stop = stop or threading.Event()
    broker = build_broker()
    declare_topology(broker)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    sched = Scheduler(client, lambda message: broker.enqueue(sign_as_ballast(message)),
                      ZoneInfo(settings.timezone))
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    server = _metrics_server(sched, client) if settings.scheduler_metrics_port else None
    log.info("scheduler.started", instance=sched.instance_id,
             schedules=[s.name for s in sched.schedules],
             metrics_port=server.server_address[1] if server else None)
    try:
        while not stop.is_set():
            try:
                sched.tick()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("scheduler.redis_unavailable", error=str(exc))
            stop.wait(TICK_S)
    finally:
        if server is not None:
            server.shutdown()
        sched.release()
        broker.close()
        log.info("scheduler.stopped", instance=sched.instance_id)


def _metrics_server(sched: Scheduler, client: redis.Redis):
    """``/metrics`` and ``/healthz`` of this scheduler, on the first free port of
    ``BALLAST_SCHEDULER_METRICS_PORT`` .. ``+ BALLAST_METRICS_PORT_SPAN - 1`` (None, logged,
    when every one is taken: the scheduler fires all the same)."""
    settings = get_settings()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BallastCollector(get_engine(), client, sched, sched.schedules))
    try:
        server = bind(settings.metrics_host, settings.scheduler_metrics_port,
                      settings.metrics_port_span, registry, lambda: scheduler_health(sched))
    except OSError as exc:
        log.error("metrics.port_unavailable", port=settings.scheduler_metrics_port,
                  span=settings.metrics_port_span, error=str(exc))
        return None
    serve_in_thread(server)
    log.info("metrics.listening", port=server.server_address[1], host=settings.metrics_host)
    return server
