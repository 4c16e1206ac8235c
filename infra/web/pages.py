"""The console's pages: each reads the documents the CLI prints (same view functions)."""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

import redis
from flask import (Blueprint, abort, current_app, g, jsonify, redirect, render_template, request,
                   session, url_for)

from domain import guard as guard_rules
from domain.buffers import account_code
from domain.errors import BallastError, NotFound
from infra import alerts, guard, ledger, rabbit, wallets
from infra import deadletter_log
from infra.challenges import views as challenge_views
from infra.contract import QUEUES
from infra.db.tables import conversion_providers
from infra.journal import views as journal_views
from infra.markets import repository as markets
from infra.treasury import cycle as treasury_cycle
from infra.treasury import views as treasury_views
from infra.settings import get_settings
from infra.web import operators, queries
from infra.web.asyncapi import as_yaml
from infra.web.asyncapi import document as asyncapi_document
from schedules.keys import last_fired
from schedules.table import SCHEDULES

bp = Blueprint("pages", __name__)

#: Queue samples kept in this process for the overview's trend (one per overview load).
TREND_SAMPLES = 60
_trend: deque[tuple[float, dict[str, dict[str, int]]]] = deque(maxlen=TREND_SAMPLES)
_ledger_lock = threading.Lock()
LEDGER_CHECK_TTL_S = 20  # s: a full ledger check scans every entry; not on every refresh


def _engine():
    return current_app.extensions["ballast.engine"]


def _read_engine():
    """Where the pages read: BALLAST_READ_DATABASE_URL's (a replica) when set.  Logins,
    sessions, audit, actions and the state of a command just sent use the primary."""
    return current_app.extensions["ballast.read_engine"]


def _size() -> int:
    return current_app.extensions["ballast.settings"].page_size


def _page(arg: str = "page") -> int:
    try:
        return min(max(1, int(request.args.get(arg, 1))), MAX_PAGE)
    except ValueError:
        return 1


#: The deepest page number a link may ask for (OFFSET stays an integer PostgreSQL takes).
MAX_PAGE = 10_000_000


def paged(rows: list, page: int, size: int, total: int | None = None,
          arg: str = "page") -> dict[str, Any]:
    """A page of ``rows`` fetched with one extra row to know whether a next page exists;
    ``total`` (the rows' count) gives the last page; ``arg``: the page's query argument."""
    last = None if total is None else max(1, -(-total // size))
    return {"rows": rows[:size], "page": page, "has_next": len(rows) > size,
            "has_prev": page > 1, "total": total, "last": last, "arg": arg}


def sent_notice() -> dict[str, Any] | None:
    """The command just sent from this page (``?sent=actor:request_id:floor``)."""
    raw = request.args.get("sent")
    if not raw or raw.count(":") < 2:
        return None
    actor, rest = raw.split(":", 1)
    request_id, floor = rest.rsplit(":", 1)
    return {"actor": actor, "request_id": request_id, "floor": floor,
            "field": request.args.get("field", "")}


# --- login --------------------------------------------------------------------------------

@bp.get("/login")
def login():
    return render_template("login.html", error=None, name="", next=request.args.get("next", ""))


@bp.post("/login")
def do_login():
    name = request.form.get("name", "").strip()
    password = request.form.get("password", "")
    nxt = request.form.get("next", "")
    with _engine().begin() as conn:
        locked = operators.NAME.match(name) is not None and operators.locked_out(conn, name)
        op = (operators.authenticate(conn, name, password)
              if operators.NAME.match(name) and not locked else None)
        operators.audit(conn, name[:64] or None, "login", "ok" if op else "refused",
                        {"locked_out": True} if locked else {}, request.remote_addr)
    if op is None:
        error = ("too many failed logins: wait 15 minutes" if locked
                 else "wrong name or password")
        return render_template("login.html", error=error, name=name, next=nxt), 401
    session.clear()  # no fixation: a fresh session (and CSRF token) per login
    session.permanent = True
    session["operator"] = op.name
    session["stamp"] = op.stamp
    # Only a local path: never redirect a login off the console.
    target = nxt if nxt.startswith("/") and not nxt.startswith("//") else url_for("pages.overview")
    return redirect(target)


@bp.post("/logout")
def logout():
    with _engine().begin() as conn:
        operators.audit(conn, g.operator.name, "logout", "ok", {}, request.remote_addr)
    session.clear()
    return redirect(url_for("pages.login"))


# --- overview -----------------------------------------------------------------------------

def _ledger_state(conn) -> dict[str, Any]:
    _ledger_cache = current_app.extensions.setdefault("ballast.ledger_check", {})
    with _ledger_lock:
        cached = _ledger_cache.get("doc")
        if cached is None or time.monotonic() - _ledger_cache["at"] > LEDGER_CHECK_TTL_S:
            cached = {**ledger.check(conn), "checked_at": datetime.now(timezone.utc).isoformat()}
            _ledger_cache.update(doc=cached, at=time.monotonic())
        return cached


def _scheduler_fires() -> list[dict[str, Any]]:
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=2)
    try:
        stamps = last_fired(client, SCHEDULES)
    except redis.RedisError:
        return []
    finally:
        client.close()
    return [{"name": s.name, "actor": s.actor,
             "last": None if stamps[s.name] is None
             else datetime.fromtimestamp(stamps[s.name], timezone.utc).isoformat()}
            for s in SCHEDULES]


@bp.get("/")
def overview():
    stats = rabbit.queue_stats()
    _trend.append((time.time(), {r["queue"]: r for r in stats}))
    trend = {r["queue"]: [s[1].get(r["queue"], {}).get("ready", 0)
                          + s[1].get(r["queue"], {}).get("delayed", 0) for s in _trend]
             for r in stats}
    with _read_engine().connect() as conn:
        doc = {
            "queues": stats,
            "alerts": queries.open_alert_counts(conn),
            "buffers": treasury_views.buffers(conn),
            "ledger": _ledger_state(conn),
        }
    doc["scheduler"] = _scheduler_fires()
    return render_template("overview.html", doc=doc, trend=trend)


# --- dead letters -------------------------------------------------------------------------

@bp.get("/dlq")
def dlq():
    queue = request.args.get("queue") or None
    if queue is not None and queue not in QUEUES:
        abort(404, f"unknown queue {queue!r}")
    page, size = _page(), _size()
    with _engine().connect() as conn:  # the durable log: one page of it, in SQL
        rows = queries.dead_letters_page(conn, queue, size + 1, (page - 1) * size)
        logged = queries.dead_letter_counts(conn)
    now = datetime.now(timezone.utc)
    for r in rows:
        r["age_s"] = _age_s(r.get("failed_at"), now)
    counts = {q: logged.get(q, 0) for q in QUEUES}
    # The list holds every queue's letters the log has (a retired queue's too): so does its count.
    total = logged.get(queue, 0) if queue else sum(logged.values())
    return render_template("dlq.html", p=paged(rows, page, size, total), queue=queue,
                           counts=counts, total=total, notice=sent_notice())


def _age_s(failed_at: Any, now: datetime) -> int | None:
    try:
        at = datetime.fromisoformat(str(failed_at))
    except ValueError:
        return None
    return int((now - (at if at.tzinfo else at.replace(tzinfo=timezone.utc))).total_seconds())


@bp.get("/dlq/<message_id>")
def dlq_show(message_id: str):
    with _engine().connect() as conn:
        rec = deadletter_log.find(conn, message_id)
    if rec is None:  # not recorded (the log failed to write): RabbitMQ's copy, if any
        dl = rabbit.find_dead_letter(message_id)
        if dl is None:
            abort(404, f"no dead letter with message id {message_id}")
        return render_template("dlq_show.html", d=dl.summary(), message=dl.body,
                               traceback=dl.info.get("traceback"))
    d = {"queue": rec["queue"], "message_id": rec["message_id"], "actor": rec["actor"],
         "request_id": rec["request_id"], "reason": rec["reason"], "retries": rec["retries"],
         "failed_at": rec["dead_lettered_at"].isoformat(), "status": rec["status"],
         "resolved_by": rec["resolved_by"]}
    return render_template("dlq_show.html", d=d, message=rec["body"], traceback=rec["traceback"])


# --- challenges and the treasury dashboard --------------------------------------------------

@bp.get("/challenges")
def challenges():
    page, size = _page(), _size()
    currency = request.args.get("currency", "NGN")
    with _read_engine().connect() as conn:
        rows = queries.challenges_page(conn, size + 1, (page - 1) * size)
        total = queries.challenge_count(conn)
        dash = challenge_views.dashboard(conn, currency)
    return render_template("challenges.html", p=paged(rows, page, size, total), dash=dash)


@bp.get("/challenges/<challenge_id>")
def challenge(challenge_id: str):
    return render_challenge(challenge_id)


def render_challenge(challenge_id: str, errors: dict | None = None, values: dict | None = None,
                     status: int = 200):
    page, size = _page(), _size()
    with _read_engine().connect() as conn:
        try:
            doc = challenge_views.show(conn, challenge_id, size + 1, (page - 1) * size)
        except NotFound as exc:
            abort(404, str(exc))
        total = queries.match_count(conn, challenge_id)
    return render_template("challenge.html", d=doc, p=paged(doc["matches"], page, size, total),
                           errors=errors or {}, values=values or {}, notice=sent_notice()), status


# --- markets ------------------------------------------------------------------------------

@bp.get("/markets")
def markets_list():
    page, size = _page(), _size()
    with _read_engine().connect() as conn:
        rows = queries.markets_page(conn, size + 1, (page - 1) * size)
        total = queries.market_count(conn)
    return render_template("markets.html", p=paged(rows, page, size, total))


@bp.get("/markets/<market_id>")
def market(market_id: str):
    return render_market(market_id)


def render_market(market_id: str, errors: dict | None = None, values: dict | None = None,
                  status: int = 200):
    page, cpage, size = _page(), _page("cpage"), _size()
    with _read_engine().connect() as conn:
        head = queries.market_header(conn, market_id)
        if head is None:
            abort(404, f"market {market_id} does not exist")
        doc = markets.show(conn, market_id, size + 1, (page - 1) * size)
        options = queries.market_options(conn, market_id)
        dist = doc["distribution"]
        lines = paged(dist["lines"], page, size,
                      queries.distribution_line_count(conn, dist["distribution_id"])) if dist else None
        commitments = paged(queries.commitments_page(conn, market_id, size + 1, (cpage - 1) * size),
                            cpage, size, sum(o["commitments"] for o in options), arg="cpage")
    return render_template("market.html", head=head, d=doc, options=options, p=lines,
                           commitments=commitments, errors=errors or {}, values=values or {},
                           notice=sent_notice()), status


# --- treasury engine ------------------------------------------------------------------------

@bp.get("/treasury")
def treasury(errors: dict | None = None):
    with _read_engine().connect() as conn:
        doc = {"buffers": treasury_views.buffers(conn),
               "auto_rebalance": treasury_cycle.auto_rebalance_enabled(conn),
               "providers": treasury_views.providers(conn, limit=_size() + 1,
                                                     offset=(_page("ppage") - 1) * _size()),
               "conversions": treasury_views.conversions(conn, limit=_size() + 1,
                                                         offset=(_page() - 1) * _size())}
        jobs = paged(doc["conversions"], _page(), _size(), queries.conversion_count(conn))
        providers = paged(doc["providers"], _page("ppage"), _size(),
                          queries.count(conn, conversion_providers), arg="ppage")
        doc["providers"] = providers["rows"]
        history = {b["account_type"]: queries.balance_history(conn, account_code(b["account_type"]))
                   for b in doc["buffers"]}
    doc["conversions"] = jobs["rows"]
    return render_template("treasury.html", doc=doc, history=history, notice=sent_notice(),
                           errors=errors or {}, jobs=jobs, providers=providers)


@bp.get("/treasury/jobs/<int:job_id>")
def job(job_id: int):
    with _read_engine().connect() as conn:
        try:
            doc = treasury_views.job(conn, job_id)
        except BallastError as exc:
            abort(404, str(exc))
    return render_template("job.html", j=doc)


# --- wallets, guard and alerts ----------------------------------------------------------------

@bp.get("/wallets")
def wallet():
    user_id = request.args.get("user", "").strip()
    page, size = _page(), _size()
    doc = None
    if user_id:
        with _read_engine().connect() as conn:
            balances = wallets.balances(conn, user_id)
            doc = {"user_id": user_id, "tier": guard.tier_of(conn, user_id), "balances": balances,
                   "history": guard.history(conn, user_id, None, size + 1, offset=(page - 1) * size),
                   "alerts": paged(alerts.listing(conn, open_only=True, user_id=user_id,
                                                  limit=size + 1, offset=(_page("alpage") - 1) * size),
                                   _page("alpage"), size,
                                   queries.alert_count(conn, True, user_id), arg="alpage"),
                   "limits": guard.limits_report(conn, user_id, sorted(balances)),
                   "history_total": queries.wallet_audit_count(conn, user_id)}
    return render_template("wallet.html", d=doc, user_id=user_id,
                           p=paged(doc["history"], page, size, doc["history_total"])
                           if doc else None)


@bp.get("/alerts")
def alerts_page(errors: dict | None = None):
    page, size = _page(), _size()
    open_only = request.args.get("all") != "1"
    with _read_engine().connect() as conn:
        rows = alerts.listing(conn, open_only=open_only, limit=size + 1, offset=(page - 1) * size)
        total = queries.alert_count(conn, open_only)
    return render_template("alerts.html", p=paged(rows, page, size, total), open_only=open_only,
                           notice=sent_notice(), errors=errors or {})


@bp.get("/analytics")
def analytics():
    now = datetime.now(timezone.utc)
    user_id = request.args.get("user") or None
    out = []
    with _read_engine().connect() as conn:
        for period in (p for p in guard_rules.PERIODS if p != "custom"):
            lo, hi = guard_rules.period_bounds(period, now, None, None)
            out.append({"period": period, **guard.analytics(conn, lo, hi, user_id=user_id)})
    return render_template("analytics.html", periods=out, user_id=user_id)


# --- payment matching -----------------------------------------------------------------------

@bp.get("/matching")
def matching():
    return render_matching()


def render_matching(errors: dict | None = None, values: dict | None = None, status: int = 200):
    cycle_id = request.values.get("cycle") or None  # a refused POST re-renders its cycle
    page, upage, apage, size = _page(), _page("upage"), _page("apage"), _size()
    with _read_engine().connect() as conn:  # each of the three lists is one page of it, in SQL
        try:
            cycle = journal_views.cycle_view(conn, cycle_id) if cycle_id else None
        except NotFound as exc:
            abort(404, str(exc))
        pending = journal_views.pending_counts(conn, cycle_id)
        parts = paged(journal_views.participations(conn, cycle_id, size + 1, (page - 1) * size),
                      page, size, cycle["participations"] if cycle
                      else journal_views.participation_count(conn, None))
        unmatched = paged(journal_views.unmatched(conn, cycle_id, size + 1, (upage - 1) * size),
                          upage, size, pending["unmatched"], arg="upage")
        ambiguous = paged(journal_views.ambiguous(conn, cycle_id, size + 1, (apage - 1) * size),
                          apage, size, pending["ambiguous"], arg="apage")
        cycles = queries.cycles(conn)
    now = datetime.now(timezone.utc)
    for row in parts["rows"]:
        row["age_s"] = _age_s(row["created_at"], now)
    return render_template("matching.html", cycle=cycle, cycle_id=cycle_id, cycles=cycles,
                           p=parts, unmatched=unmatched, ambiguous=ambiguous,
                           errors=errors or {}, values=values or {},
                           notice=sent_notice()), status


# --- contract, audit, command state ----------------------------------------------------------

@bp.get("/contract")
def contract():
    return render_template("contract.html", doc=asyncapi_document())


@bp.get("/contract/asyncapi.json")
def contract_json():
    return jsonify(asyncapi_document())


@bp.get("/contract/asyncapi.yaml")
def contract_yaml():
    return current_app.response_class(as_yaml(asyncapi_document()), mimetype="application/yaml")


@bp.get("/audit")
def audit():
    if not g.operator.may("admin"):
        abort(403)
    page, size = _page(), _size()
    with _read_engine().connect() as conn:
        who = request.args.get("operator") or None
        rows = operators.audit_page(conn, size + 1, (page - 1) * size, who)
        total = queries.audit_count(conn, who)
    return render_template("audit.html", p=paged(rows, page, size, total))


@bp.get("/commands/<actor>/<path:request_id>")
def command_state(actor: str, request_id: str):
    """Where a command sent from the console stands (the pages poll it after sending)."""
    try:
        floor = int(request.args.get("floor", 0))
    except ValueError:
        floor = 0
    with _engine().connect() as conn:
        return jsonify(queries.command_state(conn, actor, request_id, floor))
