"""Retry transient failures with backoff; dead-letter permanent ones at once, with a reason.

Replaces Dramatiq's Retries middleware.  A dead letter is a copy of the
message published (with confirm) to ``Q.XQ`` carrying
``options["dead_letter"] = {reason, code, error, traceback, failed_at, retries}``;
only then is the original acknowledged.  If that publish fails the message
is nacked, so RabbitMQ's own dead-lettering still keeps it in ``Q.XQ``.

The dead letter is recorded in the durable log (``dead_letters``) before it is published.
When that write fails for a transient cause (the database restarting), the decision stands
and only its recording is retried: the message goes back with backoff carrying
``options["dead_letter_pending"]`` (the dead letter's info and the attempts so far); a worker
receiving it never runs the actor again, it records the dead letter, publishes it to
``Q.XQ`` and, for a refusal, ``command.rejected`` — once.  After ``retry_max_retries``
attempts or ``retry_max_total_ms`` the dead letter goes to ``Q.XQ`` unrecorded (logged).
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import datetime, timezone

import pika
from dramatiq.common import compute_backoff, q_name, xq_name
from dramatiq.middleware import Middleware, SkipMessage

from domain.errors import BallastError, InvalidCommand
from infra import alerts, deadletter_log
from infra.errors import is_transient, policy_for, verdict
from infra.logs import get_logger
from infra.middleware import metrics
from infra.settings import get_settings
from infra.transaction import Transaction

log = get_logger(__name__)

#: The option of a message whose dead-lettering was decided but whose recording failed for
#: a transient cause: ``{"info": options.dead_letter, "kind": verdict kind, "attempts": n,
#: "since": ms of the first failed write}``.
PENDING = "dead_letter_pending"


class RetryOrDeadLetter(Middleware):
    """Parameters come from settings: ``retry_min_backoff_ms``, ``retry_max_backoff_ms``,
    ``retry_max_retries`` and ``retry_max_total_ms`` (first failure to last retry).

    Actor options: ``max_retries``; ``retry_within_ms``, a shorter time budget (ms, first
    failure to last retry) for a periodic step, so its retries end before its next firing
    takes over; ``throws`` (Dramatiq's: expected errors, logged without traceback)."""

    def __init__(self) -> None:
        s = get_settings()
        self.settings = s
        self.min_backoff = s.retry_min_backoff_ms  # ms
        self.max_backoff = s.retry_max_backoff_ms  # ms

    @property
    def actor_options(self):
        return {"max_retries", "throws", "retry_within_ms"}

    def before_process_message(self, broker, message):
        pending = message.options.get(PENDING)
        if pending is None:
            return
        # Dead-lettered already (its refusal or its last failure decided); only the durable
        # record was missing.  The actor is never run again.
        try:
            self._deliver(broker, message, pending)
        except Exception as exc:  # Dramatiq would log it and run the actor: never
            log.error("dead_letter.pending_failed", error=_one_line(exc))
            message.fail()  # RabbitMQ's dead-lettering keeps it, without the reason
        raise SkipMessage("a dead letter whose recording was pending")

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            return
        pending = message.options.get(PENDING)
        if isinstance(pending, dict) and not isinstance(exception, BallastError):
            # A middleware before this one failed (the signature's check: the database is
            # still away): the dead letter stays pending, its decision unchanged.
            self._deliver(broker, message, pending)
            return
        message.options.pop(PENDING, None)  # refused afresh (by the authentication)
        now_ms = int(time.time() * 1000)
        retries = message.options.get("retries", 0)
        first = message.options.setdefault("first_failure_at", now_ms)
        tb = "".join(traceback.format_exception(exception, limit=30))
        if not isinstance(exception, BallastError) and _misshapen(message):
            # Positional args or non-object kwargs cannot bind to a command, ever.
            exception = InvalidCommand(
                "invalid payload: a command carries no positional args and its kwargs "
                f"are a JSON object ({_one_line(exception)})")
        policy = policy_for(broker.actors.get(message.actor_name), self.settings)
        decided = verdict(exception, policy, retries=retries, first_failure_ms=first,
                          now_ms=now_ms)
        if decided.retry:
            message.options["retries"] = retries + 1
            message.options["traceback"] = tb
            _, delay = compute_backoff(retries, factor=self.min_backoff, max_backoff=self.max_backoff)
            delay = max(0, min(delay, first + policy.budget_ms - now_ms))  # the last retry within budget
            log.warning(
                "message.retry",
                error=_one_line(exception),
                cause=is_transient(exception) or "unexpected",
                retry=retries + 1,
                delay_ms=delay,
            )
            try:
                broker.enqueue(message, delay=delay)
            except Exception as exc:
                # Dramatiq would log this and ack the message: it would be lost.  Nack it
                # instead, so RabbitMQ's own dead-lettering keeps it in Q.XQ.
                log.error("message.retry_enqueue_failed", error=_one_line(exc))
                message.fail()
            return
        if decided.kind == "permanent":
            reason = str(exception)
        else:
            reason = f"{decided.why}: {_one_line(exception)}"
        self._dead_letter(broker, message, exception, reason, tb, retries, decided.kind)

    def _dead_letter(self, broker, message, exception, reason, tb, retries, kind):
        # Only our errors' codes: other libraries' ``code`` (SQLAlchemy's "e3q8") mean else.
        permanent = kind == "permanent"
        info = dead_letter_info(reason, exception.code if permanent else kind,
                                type(exception).__name__, tb, retries)
        # A refusal (invalid input, a business rule saying no) is the expected outcome of a
        # bad command, not a fault of Ballast: a warning without traceback.  Only a failure
        # that outlived its retries is an error.
        (log.warning if permanent else log.error)(
            "message.dead_lettered", reason=info["reason"], code=info["code"],
            permanent=permanent)
        self._deliver(broker, message, {"info": info, "kind": kind, "attempts": 0})

    def _deliver(self, broker, message, pending: dict) -> None:
        """Record the dead letter, publish it to ``Q.XQ`` (then ``command.rejected`` or the
        ``unexpected_error`` alert); if the record cannot be written for a transient cause,
        send the message back with backoff to record it later (``PENDING``)."""
        info, kind = pending.get("info") or {}, pending.get("kind") or "permanent"
        attempts = pending.get("attempts") or 0
        permanent = kind == "permanent"
        body = message.asdict()
        body["queue_name"] = q_name(message.queue_name)
        body["options"] = {
            k: v for k, v in body.get("options", {}).items()
            if k not in ("eta", "traceback", "_started", PENDING)
        }
        body["options"]["dead_letter"] = info
        try:
            deadletter_log.write(body, info)  # durable, whatever RabbitMQ's copy becomes
        except Exception as exc:
            if self._record_later(broker, message, pending, exc):
                return
            log.error("dead_letter.record_failed", error=_one_line(exc), attempts=attempts + 1)
        try:
            broker.channel.basic_publish(
                exchange="",
                routing_key=xq_name(body["queue_name"]),
                body=json.dumps(body, default=str).encode(),
                properties=pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
        except Exception as exc:
            log.error("message.dead_letter_publish_failed", error=str(exc))
            try:
                del broker.connection
            except Exception:
                pass
            message.fail()  # RabbitMQ's dead-lettering keeps it, without the reason
            return
        _count_dead_letter(body["queue_name"], message.actor_name, info.get("code"))
        if permanent:
            _publish_rejected(broker, message, info)
        elif kind == "unexpected":
            _alert_unexpected(broker, message, info)

    def _record_later(self, broker, message, pending: dict, exc: BaseException) -> bool:
        """Send the message back to record its dead letter later: a transient failure of
        the write, within the retry budget.  False when the dead letter must go now."""
        attempts = pending.get("attempts") or 0
        now_ms = int(time.time() * 1000)
        since = pending.get("since") or now_ms  # the recording's own clock
        spent = now_ms - since
        if (not is_transient(exc) or attempts >= self.settings.retry_max_retries
                or spent >= self.settings.retry_max_total_ms):
            return False
        _, delay = compute_backoff(attempts, factor=self.min_backoff, max_backoff=self.max_backoff)
        delay = max(0, min(delay, self.settings.retry_max_total_ms - spent))
        message.options[PENDING] = {**pending, "attempts": attempts + 1, "since": since}
        message.options.pop("traceback", None)
        log.warning("dead_letter.record_retry", error=_one_line(exc), attempt=attempts + 1,
                    delay_ms=delay)
        try:
            broker.enqueue(message, delay=delay)
        except Exception as enqueue_exc:
            # Neither the database nor the broker: nack, RabbitMQ's dead-lettering keeps it.
            log.error("dead_letter.record_retry_enqueue_failed", error=_one_line(enqueue_exc))
            message.fail()
        return True


def _misshapen(message) -> bool:
    """Not the contract's envelope: ``args`` must be empty and ``kwargs`` an object."""
    return bool(message.args) or not isinstance(message.kwargs, dict)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def dead_letter_info(reason: str, code: str, error: str, tb: str, retries: int) -> dict:
    """``options["dead_letter"]`` of a dead letter: what ``ballast dlq list|show`` reads."""
    return {
        "reason": reason[:500],
        "code": code,
        "error": error,
        "traceback": tb[-8000:],
        "failed_at": datetime.now(timezone.utc).isoformat(),
        "retries": retries,
    }


def _publish_rejected(broker, message, info) -> None:
    publish_rejected(broker, message.message_id, message.actor_name, q_name(message.queue_name),
                     message.kwargs, info)


def publish_rejected(broker, message_id, actor, queue: str, kwargs, info: dict) -> None:
    """``command.rejected``: an event row and its publish to ``broker``, in a transaction of
    its own."""
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    request_id = kwargs.get("request_id")
    try:
        with Transaction(broker) as tx:
            tx.emit(
                "command.rejected",
                {
                    "message_id": message_id,
                    "actor": actor,
                    "queue": queue,
                    "request_id": request_id if isinstance(request_id, str) else None,
                    "reason": info["reason"],
                    "code": info["code"],
                },
            )
            tx.commit()
    except Exception as exc:
        log.error("command_rejected.publish_failed", error=_one_line(exc))


def _alert_unexpected(broker, message, info: dict) -> None:
    """``unexpected_error:{actor}``: a step failed in a way no retry gets past (a bug, a
    violated constraint); open until an operator resolves it (runbook in the README)."""
    actor = message.actor_name if isinstance(message.actor_name, str) else "?"
    alerts.raise_alone(broker, alerts.Alert(
        "unexpected_error", "critical",
        f"{actor} failed unexpectedly and was dead-lettered: {info['reason']}"[:300],
        f"unexpected_error:{actor}",
        {"actor": actor, "message_id": message.message_id, "queue": q_name(message.queue_name),
         "error": info["error"], "reason": info["reason"]}),
        failed_event="unexpected_error.alert_failed")


def count_dead_letter(queue: str, actor: str | None, code: str) -> None:
    _count_dead_letter(queue, actor or "", code)


def _count_dead_letter(queue: str, actor: str, code: str) -> None:
    if metrics.DEAD_LETTERS is not None:
        metrics.DEAD_LETTERS.labels(queue=queue, actor=actor, code=code).inc()
