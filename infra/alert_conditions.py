"""The alert sweep's own conditions: dead letters nobody replayed or purged, and alert
webhooks that are due, stuck or given up (registered with the sweep by ``actors/alerts``)."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from infra import rabbit
from infra.alerts import (WEBHOOK_EXPIRE_H, WEBHOOK_STUCK_S, Alert, raise_alert, raise_alerts,
                          resolve_alert, resolve_all_except)
from infra.conditions import condition
from infra.logs import get_logger
from infra.settings import get_settings

log = get_logger(__name__)


@condition("dead_letters")
def dead_letters(uow) -> None:
    """Dead letters of a queue that nobody replayed or purged are an open alert naming the
    queue and the count.  Counted in the durable log (``dead_letters``, status ``dead``):
    reading the dead letters (which takes them off ``Q.XQ`` for a moment) or RabbitMQ
    expiring them does not resolve the alert; a replay or a purge does.  ``Q.XQ`` is read
    too, when the broker answers, for what only RabbitMQ dead-lettered (a nack when the dead
    letter itself could not be published, a quorum queue's delivery limit): the count is
    the larger of the two."""
    rows = uow.conn.execute(text(
        "SELECT queue, count(*) AS n, min(dead_lettered_at) AS oldest FROM dead_letters "
        "WHERE status = 'dead' GROUP BY queue ORDER BY queue")).all()
    logged = {r.queue: (r.n, r.oldest) for r in rows}
    try:
        in_rabbitmq = rabbit.dead_letter_counts()
    except Exception as exc:  # the broker is down: the durable log still tells
        log.warning("alert.dead_letters_broker_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        in_rabbitmq = {}
    open_keys = []
    raised = []
    for queue in sorted(set(logged) | {q for q, n in in_rabbitmq.items() if n > 0}):
        n_logged, oldest = logged.get(queue, (0, None))
        count = max(n_logged, in_rabbitmq.get(queue, 0))
        key = f"dead_letters:{queue}"
        open_keys.append(key)
        raised.append(Alert("dead_letters", "warning",
                            f"{count} dead letter(s) of {queue} neither replayed nor purged",
                            key, {"queue": queue, "xq": f"{queue}.XQ", "count": count,
                                  "logged": n_logged, "in_xq": in_rabbitmq.get(queue),
                                  "oldest": oldest.isoformat() if oldest else None}))
    raise_alerts(uow, raised)
    resolve_all_except(uow, "dead_letters:", open_keys)


@condition("alert_webhooks")
def alert_webhooks(uow) -> None:
    """Kick delivery of due webhook rows, give up on old ones, and say when it is stuck."""
    conn = uow.conn
    expired = conn.execute(
        text("UPDATE alert_deliveries SET status = 'expired' WHERE status = 'pending' "
             "AND created_at < now() - make_interval(hours => :h) RETURNING id"),
        {"h": WEBHOOK_EXPIRE_H},
    ).all()
    state = conn.execute(
        text("SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due, "
             "count(*) AS pending, min(created_at) AS oldest, "
             "count(*) FILTER (WHERE created_at < now() - make_interval(secs => :stuck)) AS stuck "
             "FROM alert_deliveries WHERE status = 'pending'"),
        {"stuck": WEBHOOK_STUCK_S},
    ).one()
    if state.due and get_settings().alert_webhook_url:
        uow.send("deliver_alert_webhooks", request_id=f"webhook:sweep:{uuid.uuid4()}")
    if state.stuck or expired:
        raise_alert(uow, kind="webhook_failing", severity="warning",
                    subject=f"alert webhook failing: {state.pending} undelivered, "
                            f"{len(expired)} given up", dedupe_key="webhook_failing",
                    data={"pending": state.pending, "expired": len(expired),
                          "oldest": state.oldest})
    elif state.pending == 0:
        resolve_alert(uow, "webhook_failing", note="every alert delivered")
