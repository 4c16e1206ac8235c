"""The console's actions.  Each is a command sent through ``infra.commands.send_command``
(the function behind ``ballast send``) with the logged-in operator as sender and in the
acting kwarg, except dead-letter replay and purge, which are the same RabbitMQ operations
``ballast dlq replay|purge`` run.  Heavy ones go through a confirmation page first.
Every action, sent or refused, is a line of ``console_audit``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for

from domain import challenges as rules
from domain.errors import BallastError, InvalidCommand
from infra import deadletter_log, rabbit
from infra.challenges.repository import ChallengeRepository
from infra.challenges import views as challenge_views
from infra.commands import send_command
from infra.contract import ACTORS, QUEUES, parse
from infra.web import operators, pages, queries
from infra.web.operators import ACTION_ROLES

bp = Blueprint("actions", __name__)

_FIELD = re.compile(r"(?:^invalid payload: |; )([A-Za-z_][\w.]*): ")


def field_errors(reason: str, fields: list[str]) -> dict[str, str]:
    """Put the CLI's one-line reason beside the first form field it names (else the form's)."""
    for name in _FIELD.findall(reason):
        top = name.split(".")[0]
        if top in fields:
            return {top: reason}
    return {"_form": reason}


def _engine():
    return current_app.extensions["ballast.engine"]


def _allowed(action: str) -> None:
    if not g.operator.may(ACTION_ROLES[action]):
        _audit(action, "refused", {"reason": "role"})
        abort(403)


def _audit(action: str, outcome: str, detail: dict[str, Any]) -> None:
    with _engine().begin() as conn:
        operators.audit(conn, g.operator.name, action, outcome, detail, request.remote_addr)


def _int(value: str | None) -> Any:
    """A form number as an int when it is one; else the text, for the schema to refuse."""
    v = (value or "").strip()
    return int(v) if re.fullmatch(r"-?\d{1,19}", v) else v


def _confirmed() -> bool:
    return request.form.get("confirm") == "1"


def send(action: str, actor: str, kwargs: dict[str, Any], *, back: Callable[..., Any],
         to: str, field: str = "") -> Any:
    """Send ``actor`` with ``kwargs`` as the operator; on bad input re-render ``back`` with
    the reason beside its field; else audit and return to ``to`` with the request to watch."""
    _allowed(action)
    with _engine().connect() as conn:
        floor = queries.outbox_floor(conn)
    try:
        signer = operators.signer_of(g.operator.name)
        if signer is None:
            with _engine().begin() as conn:  # an operator promoted from viewer gets a key now
                operators.ensure_signing_key(conn, g.operator.name)
            signer = operators.signer_of(g.operator.name)
        sent = send_command(actor, kwargs, sender=g.operator.name, request_prefix="web",
                            signer=signer)
    except InvalidCommand as exc:
        _audit(action, "refused", {"actor": actor, "kwargs": kwargs, "reason": str(exc)})
        return back(errors=field_errors(str(exc), list(kwargs)), values=request.form, status=422)
    _audit(action, "ok", {"actor": actor, "kwargs": kwargs, "message_id": sent.message_id})
    sep = "&" if "?" in to else "?"
    return redirect(f"{to}{sep}sent={actor}:{sent.request_id}:{floor}&field={field}")


def confirm_or_send(action: str, actor: str, kwargs: dict[str, Any], *, back: Callable[..., Any],
                    to: str, title: str, lines: list[str], field: str = "",
                    danger: str | None = None) -> Any:
    """First post: validate and show what will happen; the confirmed post sends it."""
    _allowed(action)
    if _confirmed():
        return send(action, actor, kwargs, back=back, to=to, field=field)
    try:
        parse(ACTORS[actor].schema, {"request_id": "preview", **kwargs})
    except InvalidCommand as exc:
        return back(errors=field_errors(str(exc), list(kwargs)), values=request.form, status=422)
    return render_template("confirm.html", title=title, lines=lines, danger=danger,
                           fields={k: v for k, v in request.form.items()
                                   if k not in ("csrf_token", "confirm")},
                           cancel=to)


# --- dead letters ---------------------------------------------------------------------------

@bp.post("/dlq/replay")
def dlq_replay():
    _allowed("dlq_replay")
    queue = request.form.get("queue") or None
    if queue is not None and queue not in QUEUES:
        abort(404, f"unknown queue {queue!r}")
    every = request.form.get("all") == "1"
    ids = [] if every else request.form.getlist("id")
    if not every and not ids:
        return render_template("error.html", message="choose messages, or all of a queue"), 422
    if not _confirmed():
        with _engine().connect() as conn:
            stats = queries.dead_letter_counts(conn)
        n = len(ids) if ids else (stats.get(queue, 0) if queue else sum(stats.values()))
        where = f"of {queue}" if queue else "of every queue"
        return render_template("confirm.html", title="Replay dead letters",
                               lines=[f"Replay {n} dead letter(s) {where}: each goes back to its "
                                      "queue with its retry count reset."],
                               danger=None, multi={"id": ids},
                               fields={"queue": queue or "", "all": "1" if every else ""},
                               cancel=url_for("pages.dlq", queue=queue))
    n = _replay(queue, ids)
    _audit("dlq_replay", "ok", {"queue": queue, "ids": ids, "replayed": n})
    return redirect(url_for("pages.dlq", queue=queue, done=f"replayed {n} message(s)"))


@bp.post("/dlq/purge")
def dlq_purge():
    """Delete the selected dead letters, or every one of a queue (after a confirmation)."""
    _allowed("dlq_purge")
    queue = request.form.get("queue") or None
    if queue is not None and queue not in QUEUES:
        abort(404, f"unknown queue {queue!r}")
    ids = request.form.getlist("id")
    every = request.form.get("all") == "1"
    if every == bool(ids) or (every and queue is None):
        return render_template("error.html", message="choose messages, or all of one queue"), 422
    if not _confirmed():
        with _engine().connect() as conn:
            n = len(ids) if ids else queries.dead_letter_counts(conn).get(queue, 0)
        what = f"{n} selected dead letter(s)" if ids else f"{n} dead letter(s) of {queue}"
        return render_template("confirm.html", title="Purge dead letters",
                               lines=[f"Delete {what} for good."],
                               danger="This cannot be undone.",
                               fields={"queue": queue or "", "all": "1" if every else ""},
                               multi={"id": ids}, cancel=url_for("pages.dlq", queue=queue))
    if ids:
        n = rabbit.discard(queue, set(ids))
        with _engine().begin() as conn:  # the log's copies of those too (RabbitMQ's may be gone)
            n = max(n, deadletter_log.mark_discarded(conn, ids, g.operator.name, queue))
    else:
        n = rabbit.purge(queue)
        with _engine().begin() as conn:
            n = max(n, deadletter_log.mark_purged(conn, queue, g.operator.name))
    _audit("dlq_purge", "ok", {"queue": queue, "ids": ids, "purged": n})
    return redirect(url_for("pages.dlq", queue=queue, done=f"purged {n} dead letter(s)"))


def _replay(queue: str | None, ids: list[str]) -> int:
    """What ``ballast dlq replay`` does: RabbitMQ's copies go back to their queue (with the
    operator's countersignature), those it has expired are replayed from the durable log,
    and the log records who replayed each."""
    queues = [queue] if queue else list(QUEUES)
    if ids:  # only the queues the log places them in: a scan of every Q.XQ is O(all letters)
        with _engine().connect() as conn:
            logged = deadletter_log.live(conn, ids)
        if {r["message_id"] for r in logged} >= set(ids):
            queues = [q for q in queues if q in {r["queue"] for r in logged}]
    signer = operators.signer_of(g.operator.name)
    countersign = signer.countersign if signer is not None else None
    replayed: list[dict[str, Any]] = []
    n = 0
    for q in queues:
        n += rabbit.replay(q, set(ids) if ids else None,
                           on_replayed=lambda dl: replayed.append(dl.body), countersign=countersign)
    if ids:
        missing = set(ids) - {b.get("message_id") for b in replayed}
        with _engine().connect() as conn:
            from_log = [r for r in deadletter_log.live(conn, missing) if r["queue"] in queues]
        for r in from_log:
            body = rabbit.replay_body(r["body"], r["queue"])
            rabbit.publish_confirmed(r["queue"], countersign(body) if countersign else body)
            replayed.append(r["body"])
            n += 1
    with _engine().begin() as conn:
        deadletter_log.mark_replayed(conn, replayed, g.operator.name)
    return n


# --- alerts ---------------------------------------------------------------------------------

@bp.post("/alerts/<int:alert_id>/ack")
def acknowledge_alert(alert_id: int):
    return send("acknowledge_alert", "acknowledge_alert",
                {"alert_id": alert_id, "acknowledged_by": g.operator.name},
                back=lambda errors, values, status: (pages.alerts_page(errors=errors), status),
                to=url_for("pages.alerts_page"))


# --- challenges -----------------------------------------------------------------------------

def _challenge_back(challenge_id: str):
    return lambda errors, values, status: pages.render_challenge(challenge_id, errors, values, status)


@bp.post("/challenges/<challenge_id>/configure")
def configure_treasury(challenge_id: str):
    kwargs = {"challenge_id": challenge_id, "max_risk": _int(request.form.get("max_risk")),
              "notes": request.form.get("notes", ""), "admin_id": g.operator.name}
    lines, danger = (_configure_preview(challenge_id, kwargs["max_risk"])
                     if isinstance(kwargs["max_risk"], int) else ([], None))
    return confirm_or_send("configure_treasury", "configure_treasury", kwargs,
                           back=_challenge_back(challenge_id),
                           to=url_for("pages.challenge", challenge_id=challenge_id),
                           title=f"Configure the treasury budget of {challenge_id}",
                           lines=lines, danger=danger, field="max_risk")


def _configure_preview(challenge_id: str, max_risk: int) -> tuple[list[str], str | None]:
    """The budget as it is and as it would be: what is at risk now stays at risk."""
    with _engine().connect() as conn:
        try:
            doc = challenge_views.show(conn, challenge_id, 0)
        except BallastError:
            return [], None  # the worker refuses it with the reason
        cfg = ChallengeRepository(conn).config(challenge_id)
    cur = doc["currency"]
    at_risk = (cfg.max_risk - cfg.available) if cfg else 0
    fmt = lambda n: rules.format_amount(n, cur)  # noqa: E731
    lines = [f"Max risk: {fmt(cfg.max_risk) if cfg else 'none yet'} now, {fmt(max_risk)} after.",
             f"Stake at risk already (allocated and reserved): {fmt(at_risk)}.",
             f"Budget after: {fmt(max(max_risk - at_risk, 0))} available "
             f"({max(max_risk - at_risk, 0) // doc['stake'] if doc['stake'] else 0} more "
             f"match(es) of {fmt(doc['stake'])})."]
    danger = (f"{fmt(max_risk)} is below the {fmt(at_risk)} already at risk: the worker "
              "will refuse it."
              if max_risk < at_risk else None)
    return lines, danger


@bp.post("/challenges/<challenge_id>/fill")
def fill_treasury(challenge_id: str):
    side = request.form.get("side", "")
    count = _int(request.form.get("match_count"))
    kwargs = {"challenge_id": challenge_id, "side": side, "match_count": count,
              "admin_id": g.operator.name}
    lines, danger = [], None
    if isinstance(count, int) and count > 0 and side in ("YES", "NO"):
        lines, danger = _fill_preview(challenge_id, side, count)
    return confirm_or_send("fill_treasury", "fill_treasury", kwargs,
                           back=_challenge_back(challenge_id),
                           to=url_for("pages.challenge", challenge_id=challenge_id),
                           title=f"Fill {count} match(es) on {side}", lines=lines, danger=danger,
                           field="match_count")


def _fill_preview(challenge_id: str, side: str, count: int) -> tuple[list[str], str | None]:
    """What the fill would do now, by the domain's own plan (the worker decides again)."""
    with _engine().connect() as conn:
        doc = challenge_views.show(conn, challenge_id, 0)  # the numbers, not the matches
        cfg = ChallengeRepository(conn).config(challenge_id)
        if cfg is None:
            return [], "This challenge has no treasury budget yet: configure it first."
        plan = rules.plan_fill(
            challenge_id=challenge_id, match_count=count,
            waiting=ChallengeRepository(conn).waiting(challenge_id, side, count),
            unused_personas=ChallengeRepository(conn).unused_personas(challenge_id),
            available=cfg.available, stake=doc["stake"], persona_key=lambda p: p.code)
    cur = doc["currency"]
    at_risk = plan.n * doc["stake"]
    lines = [f"{plan.n} of {count} waiting {side} user(s) get a treasury persona.",
             f"Stake at risk: {rules.format_amount(at_risk, cur)} "
             f"({plan.n} × {rules.format_amount(doc['stake'], cur)}).",
             f"Budget: {rules.format_amount(cfg.available, cur)} available now, "
             f"{rules.format_amount(cfg.available - at_risk, cur)} after "
             f"(max risk {rules.format_amount(cfg.max_risk, cur)})."]
    danger = (f"Short by {plan.shortfall}: {', '.join(plan.reasons)}." if plan.shortfall else None)
    return lines, danger


@bp.post("/challenges/<challenge_id>/resolve")
def resolve_challenge(challenge_id: str):
    result = request.form.get("result", "")
    return confirm_or_send("resolve_challenge", "resolve_challenge",
                           {"challenge_id": challenge_id, "result": result,
                            "resolved_by": g.operator.name},
                           back=_challenge_back(challenge_id),
                           to=url_for("pages.challenge", challenge_id=challenge_id),
                           title=f"Resolve {challenge_id} as {result}",
                           lines=["Settlement follows: stakes are paid out and cannot be "
                                  "un-resolved from the console."], field="result")


# --- markets --------------------------------------------------------------------------------

def _market_back(market_id: str, verb: str = ""):
    """Re-render the market with the reason beside the field of the form posted (several of
    its forms have a ``reason``): errors keyed ``<verb>-<field>``, values for that form only."""
    def back(errors, values, status):
        return pages.render_market(market_id, {f"{verb}-{k}": v for k, v in errors.items()},
                                   {"_verb": verb, **values}, status)
    return back


@bp.post("/markets/<market_id>/<verb>")
def market_action(market_id: str, verb: str):
    by = g.operator.name
    reason = request.form.get("reason", "")
    actions = {
        "resolve": ("resolve_market", {"market_id": market_id, "resolved_by": by,
                                       "winning_option_id": request.form.get("winning_option_id", "")},
                    "winning_option_id"),
        "void": ("void_market", {"market_id": market_id, "reason": reason, "resolved_by": by},
                 "reason"),
        "rollback": ("rollback_market", {"market_id": market_id, "reason": reason,
                                         "requested_by": by}, "reason"),
        "dispute": ("dispute_market", {"market_id": market_id, "reason": reason,
                                       "disputed_by": by}, "reason"),
        "confirm": ("confirm_market", {"market_id": market_id, "confirmed_by": by,
                                       "note": request.form.get("note", "")}, "note"),
    }
    if verb not in actions:
        abort(404)
    actor, kwargs, field = actions[verb]
    with _engine().connect() as conn:
        head = queries.market_header(conn, market_id)
        pool = pages.markets.show(conn, market_id, 0)["pool"] if head else 0
        n = sum(o["commitments"] for o in queries.market_options(conn, market_id)) if head else 0
    amount = rules.format_amount(pool, head["currency"]) if head else str(pool)
    lines, danger = {
        "resolve": ([f"The pool of {amount} ({n} commitment(s)) is paid out to the winners of "
                     f"{kwargs.get('winning_option_id')!r}, less fees."],
                    "Every commitment's wallet is touched."),
        "void": ([f"Every one of the {n} commitment(s) is refunded in full ({amount})."],
                 "Every commitment's wallet is touched."),
        "rollback": ([f"The distribution of {amount} over {n} commitment(s) is reversed; the "
                      "market can be resolved again."], "Every commitment's wallet is touched."),
        "dispute": (["The market is held disputed (by you, with this reason) until its "
                     "resolution is confirmed or rolled back.",
                     f"Nothing is paid or taken back: the {amount} paid out stays where it is."],
                    None),
        "confirm": (["The disputed resolution stands: the dispute ends confirmed and the market "
                     "returns to its resolved status. No money moves."], None),
    }[verb]
    return confirm_or_send(actor, actor, kwargs, back=_market_back(market_id, verb),
                           to=url_for("pages.market", market_id=market_id),
                           title=f"{verb.capitalize()} market {market_id}",
                           lines=lines, danger=danger, field=f"{verb}-{field}")


# --- treasury engine ------------------------------------------------------------------------

def _treasury_back(errors, values, status):
    return pages.treasury(errors=errors), status


@bp.post("/treasury/cycle")
def run_settlement_cycle():
    return send("run_settlement_cycle", "run_settlement_cycle", {"trigger": "manual", "requested_by": g.operator.name},
                back=_treasury_back, to=url_for("pages.treasury"))


@bp.post("/treasury/providers/<name>/<verb>")
def set_provider_status(name: str, verb: str):
    if verb not in ("pause", "resume"):
        abort(404)
    return send("set_provider_status", "set_provider_status",
                {"name": name, "status": "paused" if verb == "pause" else "active",
                 "performed_by": g.operator.name},
                back=_treasury_back, to=url_for("pages.treasury"))


@bp.post("/treasury/auto-rebalance/<verb>")
def set_auto_rebalance(verb: str):
    if verb not in ("freeze", "resume"):
        abort(404)
    return confirm_or_send("set_auto_rebalance", "set_auto_rebalance",
                           {"enabled": verb == "resume", "performed_by": g.operator.name},
                           back=_treasury_back, to=url_for("pages.treasury"),
                           title=f"{verb.capitalize()} scheduled rebalancing",
                           lines=["Scheduled settlement cycles create no conversion jobs while "
                                  "frozen; a cycle run by hand still does."
                                  if verb == "freeze" else
                                  "Scheduled settlement cycles create jobs again."])


# --- payment matching -----------------------------------------------------------------------

def _matching_back(errors, values, status):
    return pages.render_matching(errors, values, status)


def _matching_to() -> str:
    cycle = request.form.get("cycle") or None
    return url_for("pages.matching", cycle=cycle)


@bp.post("/matching/run")
def match_payments():
    cycle = request.form.get("cycle") or None
    return send("match_payments", "match_payments", {"cycle_id": cycle},
                back=_matching_back, to=_matching_to())


@bp.post("/matching/link")
def link_payment():
    kwargs = {"participation_id": request.form.get("participation_id", "").strip(),
              "journal_id": request.form.get("journal_id", "").strip(),
              "admin_id": g.operator.name}
    return send("link_payment", "link_payment", kwargs, back=_matching_back, to=_matching_to(),
                field="journal_id")


@bp.post("/matching/open")
def open_cycle():
    cycle = request.form.get("cycle", "")
    return confirm_or_send("open_cycle", "open_cycle", {"cycle_id": cycle}, back=_matching_back,
                           to=url_for("pages.matching", cycle=cycle),
                           title=f"Open cycle {cycle}",
                           lines=["Confirmed participations become the cycle's initial capital."],
                           field="cycle_id")


@bp.post("/matching/close")
def close_cycle():
    cycle = request.form.get("cycle", "")
    lines = []
    with _engine().connect() as conn:
        try:
            view = pages.journal_views.cycle_view(conn, cycle) if cycle else None
        except BallastError:
            view = None
    if view is not None:
        lines = [f"Cycle {cycle} ({view['status']}) closes with the {view['account_balance']:,} "
                 f"ISK its account holds as closing capital (initial capital "
                 f"{view['initial_capital'] or 0:,}).",
                 "No participation joins or pays into it after this."]
    return confirm_or_send("close_cycle", "close_cycle",
                           {"cycle_id": cycle, "closed_by": g.operator.name},
                           back=_matching_back, to=url_for("pages.matching", cycle=cycle),
                           title=f"Close cycle {cycle}", lines=lines, field="cycle_id",
                           danger="A closed cycle cannot be opened again.")
