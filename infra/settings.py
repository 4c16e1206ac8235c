"""Settings from the environment (CONTRACT.md, "Configuration")."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote, unquote, urlparse, urlunparse

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The levels BALLAST_LOG_LEVEL may name.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Every knob Ballast reads from the environment, prefixed ``BALLAST_``.

    Parameters:
      database_url: SQLAlchemy URL of the system of record.
      broker_url: AMQP URL of RabbitMQ; its vhost is honoured everywhere.  Several URLs,
        separated by commas (or Dramatiq's semicolons), name the nodes of one cluster: every
        connection tries them in order and a lost one reconnects to the next that answers.
        They must name one vhost (checked below).
      read_database_url: SQLAlchemy URL the read-only views read from (a replica); unset:
        ``database_url``.  Never used for anything that writes or claims.
      redis_url: Redis URL; its db number is honoured everywhere.
      timezone: IANA zone for daily reports.
      alert_webhook_url: where new alerts are POSTed as JSON, if set.
      log_format: ``json`` for machines, ``console`` for people.
      metrics_port: Prometheus exposition port of a worker pool (0 turns it off); taken by
        another pool on the host, the next free one of ``metrics_port_span`` ports.
      metrics_port_span: how many ports from ``metrics_port`` (and from
        ``scheduler_metrics_port``) a process may try.
      metrics_host: the address the exposition servers bind.
      metrics_dir: the pool's Prometheus multiprocess directory (emptied at start; one per
        pool); unset: a new temporary directory per pool.
      scheduler_metrics_port: the scheduler's ``/metrics`` (its heartbeat, the last firing of
        each schedule and the database-derived gauges) and ``/healthz`` (0 turns it off).
      queue_type: ``classic`` or ``quorum`` RabbitMQ queues.
      queue_delivery_limit: deliveries of one message before a quorum queue dead-letters it.
      rabbitmq_api_url: RabbitMQ management HTTP API (vhosts, honest queue counts); unset:
        ``http://<broker host>:15672`` with the broker URL's credentials.
      auth: ``require`` (default) refuses unsigned commands; ``warn`` processes them but
        logs, counts and alerts each one; ``off`` checks nothing (throwaway local runs).
      auth_window_s: the oldest signature accepted; shorter than request ids are
        remembered (``processed_requests``, pruned after
        ``retention_requests_days``; checked below).
      auth_skew_s: how far in the future a ``signed_at`` may be.
      signing_key / signing_key_file: Ballast's own key (next steps, scheduled firings).
      operator_key / operator_key_file: the operator's key (``ballast send``, CLI levers).
      alert_webhook_secret: HMAC-SHA256 secret signing each alert webhook POST.
    """

    model_config = SettingsConfigDict(env_prefix="BALLAST_", extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/ballast"
    read_database_url: str | None = None
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    redis_url: str = "redis://127.0.0.1:6379/0"
    timezone: str = "UTC"
    alert_webhook_url: str | None = None
    log_format: str = Field(default="json", pattern="^(json|console)$")
    log_level: str = "INFO"
    metrics_port: int = Field(default=9191, ge=0, le=65535)
    metrics_port_span: int = Field(default=8, ge=1, le=1000)
    metrics_host: str = "0.0.0.0"
    metrics_dir: str | None = None
    scheduler_metrics_port: int = Field(default=9200, ge=0, le=65535)
    # RabbitMQ queue type of every Ballast queue (with its .DQ and .XQ): ``classic`` or
    # ``quorum`` (replicated on a cluster; a message delivered more than
    # ``queue_delivery_limit`` times is dead-lettered by RabbitMQ itself).
    queue_type: str = Field(default="classic", pattern="^(classic|quorum)$")
    queue_delivery_limit: int = Field(default=20, ge=1)
    rabbitmq_api_url: str | None = None
    # How long RabbitMQ keeps a dead letter in Q.XQ (x-message-ttl, set when the queue is
    # first declared); every dead letter is also kept in PostgreSQL (dead_letters).
    dead_letter_ttl_ms: int = Field(default=7 * 86_400_000, ge=1)  # ms; Dramatiq's 7 days

    # Retention (infra/retention.py): published outbox rows and remembered request ids are
    # deleted after these many days.  A request id must outlive any dead letter that could
    # be replayed, hence the check below.
    retention_outbox_days: int = Field(default=30, ge=1)
    retention_requests_days: int = Field(default=30, ge=1)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        # Checked here, so a bad value is the one-line settings error, not a traceback
        # from logging when the first logger is made.
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level ({', '.join(LOG_LEVELS)})")
        return value
    @property
    def broker_urls(self) -> list[str]:
        """Every node's AMQP URL, in the order connections try them."""
        return broker_urls(self.broker_url)

    @model_validator(mode="after")
    def _one_vhost(self) -> "Settings":
        vhosts = {vhost_of(u) for u in self.broker_urls}
        if not self.broker_urls:
            raise ValueError("BALLAST_BROKER_URL names no URL")
        if len(vhosts) > 1:
            raise ValueError("BALLAST_BROKER_URL: every URL of the list must name the same vhost "
                             f"(found {', '.join(sorted(vhosts))})")
        return self

    @model_validator(mode="after")
    def _request_ids_outlive_dead_letters(self) -> "Settings":
        if self.retention_requests_days * 86_400_000 <= self.dead_letter_ttl_ms:
            raise ValueError("BALLAST_RETENTION_REQUESTS_DAYS must be longer than "
                             "BALLAST_DEAD_LETTER_TTL_MS (a replayed dead letter would run twice)")
        if self.retention_requests_days * 86_400 <= self.auth_window_s:
            raise ValueError("BALLAST_RETENTION_REQUESTS_DAYS must be longer than "
                             "BALLAST_AUTH_WINDOW_S (a signed command could be replayed "
                             "after its request id is forgotten)")
        return self

    # Who may send what (CONTRACT.md, "Signed commands").
    auth: str = Field(default="require", pattern="^(require|warn|off)$")
    auth_window_s: int = Field(default=86_400, ge=60)  # s
    auth_skew_s: int = Field(default=60, ge=0)  # s
    auth_burst_count: int = Field(default=5, ge=1)  # refusals of one producer ...
    auth_burst_window_s: int = Field(default=60, ge=1)  # s ... within this: security alert
    signing_key: str | None = Field(default=None, repr=False)
    signing_key_file: str | None = None
    operator_key: str | None = Field(default=None, repr=False)
    operator_key_file: str | None = None
    alert_webhook_secret: str | None = Field(default=None, repr=False)

    # Retry policy of the workers.  Everything stays far below RabbitMQ's
    # consumer timeout (30 min by default), because delayed messages are held
    # unacknowledged by the worker until their eta.
    retry_min_backoff_ms: int = 500  # ms
    retry_max_backoff_ms: int = 30_000  # ms
    retry_max_retries: int = 8
    retry_max_total_ms: int = 300_000  # ms, first failure to last retry
    # An unexpected error (neither permanent nor transient, infra/errors.py) cannot pass by
    # waiting: this many retries, then the dead letters and an ``unexpected_error`` alert.
    retry_unexpected_max_retries: int = Field(default=2, ge=0)
    actor_time_limit_ms: int = 120_000  # ms
    # How often a worker process's threads hand the GIL over (``SwitchInterval``); 0 keeps
    # Python's default (5,000 µs).
    worker_switch_interval_us: int = Field(default=500, ge=0)
    # Most messages of one actor a worker process commits in one transaction
    # (``infra.group_commit``; the actors declared ``grouped``); 1 turns grouping off.
    group_commit_max: int = Field(default=16, ge=1, le=100)

    # Settlement batch sizes (seats / commitments per transaction).
    challenge_settle_batch: int = Field(default=200, ge=1)
    market_settle_batch: int = Field(default=5000, ge=1)

    # Test-only fault injection (see infra/faults.py); empty in production.
    faults: str = ""
    fault_dir: str = ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def broker_urls(value: str) -> list[str]:
    """The AMQP URLs of ``value``: one URL, or several separated by ``,`` or ``;`` (a comma
    inside a password must be percent-encoded, ``%2C``)."""
    return [u.strip() for u in re.split(r"[,;]", value or "") if u.strip()]


def vhost_of(url: str) -> str:
    """The vhost an AMQP URL names (``/`` when it names none); of the first URL of a list."""
    first = broker_urls(url)[0] if broker_urls(url) else url
    path = urlparse(first).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def with_vhost(url: str, vhost: str) -> str:
    """``url`` (one or a comma-separated list) with every URL pointing at ``vhost``."""
    return ",".join(urlunparse(urlparse(u)._replace(path="/" + quote(vhost, safe="")))
                    for u in broker_urls(url))
