"""Treasury engine views and levers: ``ballast buffers``, ``providers``, ``conversions``,
``callbacks``, and ``ballast treasury reconcile|custody``.

(The ``ballast treasury`` group belongs to the challenges capability; the engine adds its
subcommands to it.)
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Callable

import click

from domain.buffers import CURRENCY_OF, changed_thresholds, thresholds_doc
from domain.conversions import DIRECTIONS, PPM, format_rate, parse_rate
from domain.errors import BallastError, InvalidCommand
from domain.money import format_minor
from domain import request_ids
from infra import providers
from infra.cli import in_process
from infra.cli.identity import operator_identity
from infra.cli.levers import by_option, check_by, confirm, lever_options, record, record_now
from infra.cli.output import console, emit, fail, json_option, table
from infra.db.engine import get_engine, get_read_engine
from infra.logs import configure_logging
from infra.providers import Report
from infra.providers import http as http_provider
from infra.providers import simulated as simulated_provider
from infra.treasury import callbacks, overrides, reconcile, store, views
from infra.uow import UnitOfWork

ACCOUNT_TYPES = click.Choice(sorted(CURRENCY_OF))


def register(cli: click.Group) -> None:
    cli.add_command(buffers_group)
    cli.add_command(providers_group)
    cli.add_command(conversions_group)
    cli.add_command(callbacks_group)
    treasury = _treasury_group(cli)
    treasury.add_command(treasury_reconcile)
    treasury.add_command(custody_group)


def _guarded(fn: Callable[[], Any]) -> Any:
    """Business refusals as one line: exit 2 for bad input, 1 for a refusal."""
    try:
        return fn()
    except InvalidCommand as exc:
        fail(str(exc), 2)
    except BallastError as exc:
        fail(str(exc), 1)


def _uow(actor: str, what: str) -> UnitOfWork:
    return UnitOfWork(actor=actor, request_id=request_ids.fresh("cli", what), payload={"cli": what})


def _call(actor: str, **kwargs: Any) -> Any:
    """The command of ``actor`` run here (validated, claimed, committed, as its actor
    would); what its handler returns.  Refusals as ``_guarded``'s one line."""
    return _guarded(lambda: in_process.call(actor, request_id=request_ids.fresh("cli", actor),
                                            **kwargs))


def _job(job_id: int) -> dict[str, Any]:
    with get_engine().connect() as conn:
        return views.job(conn, job_id)


def _lever(actor: str, command: str, target: str | None, by: str,
           detail: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
           **kwargs: Any) -> Any:
    """Pull a lever: the command of ``actor`` run here (validated, claimed, committed, as its
    actor would), with the CLI's line of ``operator_actions`` in the same transaction.
    ``detail``: that line's detail, or a function of what the handler returned."""
    def audit(uow: UnitOfWork, result: Any) -> None:
        record(uow.conn, by, command, target, detail(result) if callable(detail) else detail)

    return _guarded(lambda: in_process.call(actor, then=audit,
                                            request_id=request_ids.fresh("cli", actor), **kwargs))


# --- buffers -----------------------------------------------------------------------------

@click.group("buffers", invoke_without_command=True)
@json_option
@click.pass_context
def buffers_group(ctx: click.Context, as_json: bool) -> None:
    """Buffer balances against their thresholds (and the levers on rebalancing)."""
    if ctx.invoked_subcommand is not None:
        return
    with get_read_engine().connect() as conn:
        doc = views.buffers(conn)

    def human(rows):
        table(rows, ["account_type", "currency", "balance", "min", "target", "max", "status"],
              headers={"currency": "cur"}, title="buffers")

    emit(doc, as_json, human)


@buffers_group.command("rebalance")
@by_option
@json_option
def buffers_rebalance(by: str, as_json: bool) -> None:
    """Run a settlement cycle now (even while auto-rebalancing is paused)."""
    check_by(by)

    def audit(uow: UnitOfWork, created: list[int]) -> None:  # in the cycle's transaction
        record(uow.conn, by, "buffers rebalance", None, {"jobs_created": list(created)})
        overrides.record_lever(uow.conn, "rebalance", by, data={"jobs_created": created})

    def run():  # the run_settlement_cycle handler, validated and claimed, and its audit rows:
        # one transaction.  --by is checked here (check_by), as it always was, so it goes to
        # the handler beside the message, whose requested_by is a narrower identifier.
        return in_process.call("run_settlement_cycle", extras={"requested_by": by}, then=audit,
                              request_id=request_ids.fresh("cli", "rebalance"), trigger="manual")

    created = _guarded(run)
    emit({"jobs_created": len(created)}, as_json,
         lambda d: console.print(f"settlement cycle: {d['jobs_created']} job(s) created "
                                 f"{created if created else ''}"))


def _set_auto(enabled: bool, by: str, as_json: bool) -> None:
    check_by(by)
    _lever("set_auto_rebalance", f"buffers {'resume' if enabled else 'pause'}", None, by,
           enabled=enabled, performed_by=by)
    emit({"auto_rebalance": enabled, "by": by}, as_json,
         lambda d: console.print(f"auto-rebalancing {'resumed' if enabled else 'paused'} by {by}"))


@buffers_group.command("pause")
@by_option
@json_option
def buffers_pause(by: str, as_json: bool) -> None:
    """Pause auto-rebalancing: scheduled cycles create no jobs until resumed."""
    _set_auto(False, by, as_json)


@buffers_group.command("resume")
@by_option
@json_option
def buffers_resume(by: str, as_json: bool) -> None:
    """Resume auto-rebalancing."""
    _set_auto(True, by, as_json)


@buffers_group.command("set")
@click.argument("account_type", type=ACCOUNT_TYPES)
@click.option("--min", "mn", type=int, help="Minor units.")
@click.option("--target", type=int, help="Minor units.")
@click.option("--max", "mx", type=int, help="Minor units.")
@click.option("--batch", type=int, help="Minor units.")
@by_option
@lever_options
@json_option
def buffers_set(account_type: str, mn: int | None, target: int | None, mx: int | None,
                batch: int | None, by: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Change a buffer's thresholds (minor units of its currency): asks first."""
    check_by(by)

    def preview():  # what the lever would do, validated by the domain; nothing written
        with get_engine().connect() as conn:
            buf = store.load_buffers(conn)[account_type]
        return buf.currency, buf.thresholds, changed_thresholds(
            buf.thresholds, min=mn, target=target, max=mx, batch=batch)

    cur, old, new = _guarded(preview)
    what = (f"set {account_type} thresholds to " + ", ".join(
        f"{k} {format_minor(b, cur)} (was {format_minor(a, cur)})"
        for k, a, b in zip(("min", "target", "max", "batch"), _thresholds(old).values(),
                           _thresholds(new).values()) if a != b) if old != new
        else f"leave {account_type} thresholds as they are")
    if dry_run:
        emit({"dry_run": True, "account_type": account_type, "currency": cur,
              "before": _thresholds(old), "after": _thresholds(new)}, as_json,
             lambda d: click.echo(f"dry run: would {what}"))
        return
    confirm(what[0].upper() + what[1:], yes)
    _lever("set_buffer_thresholds", "buffers set", account_type, by,
           lambda done: {"before": _thresholds(done[0].thresholds), "after": _thresholds(done[1])},
           account_type=account_type, min_amount=mn, target_amount=target, max_amount=mx,
           batch_amount=batch, performed_by=by)
    with get_engine().connect() as conn:
        emit(next(r for r in views.buffers(conn) if r["account_type"] == account_type), as_json)


_thresholds = thresholds_doc


# --- providers ---------------------------------------------------------------------------

@click.group("providers", invoke_without_command=True)
@json_option
@click.pass_context
def providers_group(ctx: click.Context, as_json: bool) -> None:
    """Conversion providers: health, priority, today's volume."""
    if ctx.invoked_subcommand is not None:
        return
    with get_read_engine().connect() as conn:
        doc = views.providers(conn)
    emit(doc, as_json, lambda rows: table(
        rows, title="providers (volume: USD at par)", currency="USD",
        headers={"success_rate": "success", "daily_volume_used": "volume today"}))


def _simulated_options(fn):
    for opt in reversed([
        click.option("--rate", help="Destination per source unit, e.g. 0.9990 (http: assumed "
                                    "when it does not quote)."),
        click.option("--fee-bps", type=int, help="Fee in basis points (http: as --rate)."),
        click.option("--latency-polls", type=int, help="Simulated: polls before it finishes."),
        click.option("--fail-mode", type=click.Choice(
            ["none", "reject", "error", "timeout", "stick", "fail_late"]), help="Simulated."),
        click.option("--url", help="HTTP: base URL of the provider's API."),
        click.option("--timeout-ms", type=int, help="HTTP: per request."),
        click.option("--retries", type=int, help="HTTP: retries with the same key."),
        click.option("--min-amount", type=int, help="Per order, USD cents at par."),
        click.option("--max-amount", type=int, help="Per order, USD cents at par."),
        click.option("--daily-limit", type=int, help="Per day, USD cents at par."),
        click.option("--direction", "directions", multiple=True,
                     type=click.Choice(sorted(DIRECTIONS)), help="Repeatable; default both."),
    ]):
        fn = opt(fn)
    return fn


def _config(kind: str, current: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    if kind == "simulated":
        if o.get("url") is not None:
            raise InvalidCommand("--url is for http providers")
        return simulated_provider.make_config(
            rate_ppm=parse_rate(o["rate"]) if o.get("rate") is not None
            else current.get("rate_ppm", PPM),
            fee_bps=o["fee_bps"] if o.get("fee_bps") is not None else current.get("fee_bps", 0),
            latency_polls=o["latency_polls"] if o.get("latency_polls") is not None
            else current.get("latency_polls", 1),
            fail_mode=o["fail_mode"] or current.get("fail_mode", "none"))
    if any(o.get(k) is not None for k in ("latency_polls", "fail_mode")):
        raise InvalidCommand("--latency-polls, --fail-mode are for simulated providers")
    url = o.get("url") or current.get("url")
    if not url:
        raise InvalidCommand("an http provider needs --url")

    def pick(key: str, default: int) -> int:
        return o[key] if o.get(key) is not None else current.get(key, default)

    # --rate/--fee-bps: what selection assumes when the provider does not quote (GET /quote)
    rate = parse_rate(o["rate"]) if o.get("rate") is not None else current.get("rate_ppm")
    fee = o["fee_bps"] if o.get("fee_bps") is not None else current.get("fee_bps")
    return http_provider.make_config(url, pick("timeout_ms", http_provider.DEFAULT_TIMEOUT_MS),
                                     pick("retries", http_provider.DEFAULT_RETRIES),
                                     rate_ppm=rate, fee_bps=fee)


def _show_provider(name: str, as_json: bool) -> None:
    with get_read_engine().connect() as conn:
        doc = views.provider(conn, name)

    def human(d):
        table([provider_summary(d)], title=f"provider {name}")

    emit(doc, as_json, human)


def provider_summary(d: dict[str, Any]) -> dict[str, Any]:
    c = d["config"]
    conf = (f"rate {format_rate(c['rate_ppm'])}, fee {c['fee_bps']} bps, "
            f"latency {c['latency_polls']} polls, fail {c['fail_mode']}"
            if d["type"] == "simulated" else f"{c['url']} ({c['timeout_ms']} ms, {c['retries']} retries)")
    return {k: d[k] for k in ("name", "type", "status", "priority", "healthy", "success_rate",
                              "daily_volume_used")} | {"config": conf}


@providers_group.command("add")
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(["simulated", "http"]), required=True)
@click.option("--priority", type=int, required=True, help="Lower wins.")
@_simulated_options
@by_option
@json_option
def providers_add(name: str, kind: str, priority: int, by: str, as_json: bool, **o: Any) -> None:
    """Add a provider (simulated for demos and tests, or http)."""
    check_by(by)

    def config():
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise InvalidCommand("a provider name is 1-64 letters, digits, '_', '.', '-'")
        return _config(kind, {}, o)

    _lever("add_provider", "providers add", name, by, {"type": kind, "priority": priority},
           name=name, kind=kind, priority=priority,
           directions=list(o["directions"] or sorted(DIRECTIONS)), min_amount=o["min_amount"] or 0,
           max_amount=o["max_amount"], daily_limit=o["daily_limit"], config=_guarded(config),
           performed_by=by)
    _show_provider(name, as_json)


@providers_group.command("set")
@click.argument("name")
@click.option("--priority", type=int)
@_simulated_options
@by_option
@lever_options
@json_option
def providers_set(name: str, priority: int | None, by: str, yes: bool, dry_run: bool,
                  as_json: bool, **o: Any) -> None:
    """Change a provider's priority, limits or configuration: asks first."""
    check_by(by)

    def preview():  # what the lever would do; nothing written
        with get_engine().connect() as conn:
            current = store.get_provider(conn, name)
        fields: dict[str, Any] = {"config": _config(current.kind, current.config, o)}
        if priority is not None:
            fields["priority"] = priority
        for k in ("min_amount", "max_amount", "daily_limit"):
            if o[k] is not None:
                fields[k] = o[k]
        if o["directions"]:
            fields["directions"] = list(o["directions"])
        before = {k: getattr(current, k) for k in fields}
        before = {k: list(v) if isinstance(v, tuple) else v for k, v in before.items()}
        return fields, before, {k: v for k, v in fields.items() if before.get(k) != v}

    fields, before, changed = _guarded(preview)
    what = (f"change provider {name}: " + "; ".join(
        f"{k} {before[k]} -> {v}" for k, v in changed.items()) if changed
        else f"leave provider {name} as it is")
    if dry_run:
        emit({"dry_run": True, "name": name, "before": {k: before[k] for k in changed},
              "after": changed}, as_json, lambda d: click.echo(f"dry run: would {what}"))
        return
    confirm(what[0].upper() + what[1:], yes)
    _lever("update_provider", "providers set", name, by,
           lambda done: {"before": {k: done[0][k] for k in done[1]}, "after": done[1]},
           name=name, performed_by=by, **fields)
    _show_provider(name, as_json)


def _provider_status(name: str, status: str, by: str, as_json: bool) -> None:
    check_by(by)
    _lever("set_provider_status", f"providers {'pause' if status == 'paused' else 'resume'}",
           name, by, name=name, status=status, performed_by=by)
    _show_provider(name, as_json)


@providers_group.command("pause")
@click.argument("name")
@by_option
@json_option
def providers_pause(name: str, by: str, as_json: bool) -> None:
    """Take a provider out of selection (jobs it holds are still polled)."""
    _provider_status(name, "paused", by, as_json)


@providers_group.command("resume")
@click.argument("name")
@by_option
@json_option
def providers_resume(name: str, by: str, as_json: bool) -> None:
    """Put a paused provider back into selection."""
    _provider_status(name, "active", by, as_json)


@providers_group.command("check")
@click.argument("name")
@json_option
def providers_check(name: str, as_json: bool) -> None:
    """Ask the provider itself whether it is up (its ``health`` call).  Exit 1 when not."""
    def row():
        with get_engine().connect() as conn:
            return store.get_provider(conn, name)

    p = _guarded(row)
    up = providers.build(p.name, p.kind, p.config).health()
    emit({"name": name, "reachable": up}, as_json,
         lambda d: console.print(f"{name}: {'reachable' if up else '[red]unreachable[/red]'}"))
    if not up:
        raise SystemExit(1)


# --- conversions -------------------------------------------------------------------------

@click.group("conversions", invoke_without_command=True)
@click.option("--active", is_flag=True, help="Only jobs still in flight.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@click.pass_context
def conversions_group(ctx: click.Context, active: bool, limit: int, as_json: bool) -> None:
    """Conversion jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with get_read_engine().connect() as conn:
        doc = views.conversions(conn, active_only=active, limit=limit)
    def human(rows):
        table([{**r, "direction": r["direction"],
                "source_amount": format_minor(r["source_amount"], r["direction"].split("->")[0]),
                "destination_amount": "" if r["destination_amount"] is None else
                format_minor(r["destination_amount"], r["direction"].split("->")[1]),
                } for r in rows], title="conversions")

    emit(doc, as_json, human)


@conversions_group.command("poll")
@json_option
def conversions_poll(as_json: bool) -> None:
    """Poll every job a provider holds, now."""
    polled = in_process.call("poll_conversion", request_id=request_ids.fresh("cli", "poll"))
    emit({"polled": polled}, as_json, lambda d: console.print(f"polled {d['polled']} job(s)"))


@conversions_group.command("show")
@click.argument("job_id", type=int)
@json_option
def conversions_show(job_id: int, as_json: bool) -> None:
    """One job with its attempts and every transition."""
    def run():
        with get_read_engine().connect() as conn:
            return views.job(conn, job_id)

    doc = _guarded(run)

    def human(d):
        table([{k: v for k, v in d.items() if k not in ("attempt_log", "transitions", "overrides")}],
              title=f"job {job_id}")
        table(d["attempt_log"], ["attempt", "provider", "idempotency_key", "status", "error",
                                 "decision"], title="attempts")
        table(d["transitions"], title="transitions")
        if d["overrides"]:
            table(d["overrides"], ["action", "by", "reason", "evidence", "at"], title="overrides")

    emit(doc, as_json, human)


@conversions_group.command("convert")
@click.option("--from", "source", type=ACCOUNT_TYPES, required=True, help="Source buffer.")
@click.option("--to", "destination", type=ACCOUNT_TYPES, required=True, help="Destination buffer.")
@click.option("--amount", type=click.IntRange(min=1), required=True,
              help="Minor units of the source currency.")
@click.option("--by", required=True, help="Who asks for it.")
@json_option
def conversions_convert(source: str, destination: str, amount: int, by: str, as_json: bool) -> None:
    """Convert manually between two buffers (through a provider, like any job)."""
    by = operator_identity(by)
    job_id = _call("convert_manually", source_type=source, destination_type=destination,
                   amount=amount, performed_by=by)
    emit(_guarded(lambda: _job(job_id)), as_json)


@conversions_group.command("cancel")
@click.argument("job_id", type=int)
@click.option("--by", required=True)
@click.option("--reason", required=True)
@click.option("--force", is_flag=True,
              help="Also when a provider may hold it (you vouch it will not complete): asks first.")
@lever_options
@json_option
def conversions_cancel(job_id: int, by: str, reason: str, force: bool, yes: bool, dry_run: bool,
                       as_json: bool) -> None:
    """Cancel a job; its transit returns to the source."""
    check_by(by)

    def look():
        with get_engine().connect() as conn:
            return views.job(conn, job_id)

    job = _guarded(look)
    held = [a for a in job["attempt_log"] if a["status"] in ("submitting", "accepted")]
    what = (f"cancel conversion job {job_id} ({job['status']}, "
            f"{format_minor(job['source_amount'], job['direction'].split('->')[0])} "
            f"{job['direction']})" + (f" although {held[0]['provider']} may still complete it"
                                      if held else ""))
    if dry_run:
        emit({"dry_run": True, "job_id": job_id, "status": job["status"],
              "held_by": [a["provider"] for a in held], "force_needed": bool(held)}, as_json,
             lambda d: click.echo(f"dry run: would {what}"
                                     + (" (needs --force)" if held and not force else "")))
        return
    if force:
        confirm(what[0].upper() + what[1:], yes)

    # cancel_conversion claims and commits under the job's lock, in its own transaction: no
    # `then`, so the operator_actions line is written after, in one of its own (as before).
    _call("cancel_conversion", job_id=job_id, reason=reason, force=force, performed_by=by)
    record_now(by, "conversions cancel", str(job_id), {"reason": reason, "force": force})
    emit(_guarded(look), as_json)


# --- the emergency override -----------------------------------------------------------------

@conversions_group.command("freeze")
@click.option("--by", required=True, help="Who freezes (recorded).")
@click.option("--reason", required=True)
@json_option
def conversions_freeze(by: str, reason: str, as_json: bool) -> None:
    """Freeze every conversion: no new job, nothing submitted; held jobs are still polled."""
    by = operator_identity(by)
    emit(_call("freeze_conversions", reason=reason, performed_by=by), as_json,
         lambda d: console.print(f"conversions [red]frozen[/red] by {d['by']}: {d['reason']}"))


@conversions_group.command("thaw")
@click.option("--by", required=True, help="Who thaws (recorded).")
@json_option
def conversions_thaw(by: str, as_json: bool) -> None:
    """Lift the freeze; pending jobs are handed to submission again."""
    by = operator_identity(by)
    emit(_call("thaw_conversions", performed_by=by), as_json,
         lambda d: console.print(f"conversions thawed by {d['by']}; "
                                 f"{d['pending_resubmitted']} pending job(s) resubmitted"))


@conversions_group.command("complete")
@click.argument("job_id", type=int)
@click.option("--by", required=True, help="Who completes it (recorded).")
@click.option("--reason", required=True)
@click.option("--evidence", required=True, help="The provider's reference of the order.")
@click.option("--destination-amount", type=int, required=True,
              help="Net minor units the destination received.")
@click.option("--fee", type=int, required=True, help="The provider's fee, destination minor units.")
@json_option
def conversions_complete(job_id: int, by: str, reason: str, evidence: str,
                         destination_amount: int, fee: int, as_json: bool) -> None:
    """Complete a stuck job by hand, posted to the ledger like the provider's completion."""
    by = operator_identity(by)
    _call("complete_conversion", job_id=job_id, reason=reason, evidence=evidence,
          destination_amount=destination_amount, fee_amount=fee, performed_by=by)
    emit(_guarded(lambda: _job(job_id)), as_json)


@conversions_group.command("fail")
@click.argument("job_id", type=int)
@click.option("--by", required=True, help="Who fails it (recorded).")
@click.option("--reason", required=True)
@click.option("--evidence", required=True, help="The provider's reference of the order.")
@json_option
def conversions_fail(job_id: int, by: str, reason: str, evidence: str, as_json: bool) -> None:
    """Fail a stuck job by hand: transit back to the source, like a provider's failure."""
    by = operator_identity(by)
    _call("fail_conversion", job_id=job_id, reason=reason, evidence=evidence, performed_by=by)
    emit(_guarded(lambda: _job(job_id)), as_json)


# --- reconciliation (under ``ballast treasury``) ---------------------------------------------

def _treasury_group(cli: click.Group) -> click.Group:
    group = cli.commands.get("treasury")
    if group is None:
        @click.group("treasury")
        def group() -> None:
            """The treasury."""
        cli.add_command(group)
    return group


@click.command("reconcile")
@json_option
def treasury_reconcile(as_json: bool) -> None:
    """Ledger against custodian, providers' books and jobs.  Exit 1 on any difference."""
    engine = get_engine()
    reports = reconcile.provider_reports(engine)
    with engine.connect() as conn:
        doc = reconcile.report(conn, reports)

    def human(d):
        if d["ok"]:
            console.print(f"reconciliation OK ({len(d['providers_reporting'])} provider(s) "
                          "reporting their books)")
        else:
            table(d["differences"], ["check", "subject", "currency", "expected", "actual",
                                     "difference", "detail"], title="reconciliation differences")

    emit(doc, as_json, human)
    if not doc["ok"]:
        raise SystemExit(1)


@click.group("custody")
def custody_group() -> None:
    """The custodian stand-in: balances a custodian reports for the buffers."""


@custody_group.command("report")
@click.argument("account_type", type=ACCOUNT_TYPES)
@click.option("--balance", type=int, required=True, help="Minor units, as the custodian says.")
@click.option("--by", required=True, help="Who (or which feed) reports it.")
@json_option
def custody_report(account_type: str, balance: int, by: str, as_json: bool) -> None:
    """Record what the custodian (the chain for USDC, a bank for USD) holds now."""
    by = operator_identity(by)
    if not by.strip():
        fail("--by NAME is required", 2)
    emit(_call("report_custody", account_type=account_type, balance=balance,
               performed_by=by.strip()), as_json)


# --- provider callbacks ---------------------------------------------------------------------

@click.group("callbacks")
def callbacks_group() -> None:
    """Provider status callbacks (webhooks)."""


@callbacks_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8088, show_default=True, type=int)
def callbacks_serve(host: str, port: int) -> None:
    """Receive signed provider callbacks on POST /callbacks/PROVIDER."""
    configure_logging()
    in_process.register()  # before the first callback: the server answers from many threads
    callbacks.serve(host, port, apply_callback)


def apply_callback(job_id: int, key: str, report: Report) -> bool:
    """A verified callback, applied by the ``apply_conversion_callback`` step in this
    process (the endpoint's ``apply``)."""
    return in_process.call("apply_conversion_callback",
                           request_id=request_ids.next_step("conversion", job_id, "callback"), job_id=job_id,
                           idempotency_key=key, **asdict(report))


@callbacks_group.command("secret")
@click.argument("name")
@click.option("--secret", help="The secret to use (default: a new random one).")
@json_option
def callbacks_secret(name: str, secret: str | None, as_json: bool) -> None:
    """Set the provider's callback signing secret; printed once, never shown again."""
    import secrets

    value = secret or secrets.token_hex(32)

    # Deliberately not a command of the contract (issue 11): a secret never travels in a
    # broker message or a dead letter; it is written here, in the CLI's own transaction.
    def run():
        if len(value) < 16:
            raise InvalidCommand("a callback secret has at least 16 characters")
        with _uow("treasury_settings", "callback_secret") as uow:
            store.set_callback_secret(uow.conn, name, value)
            uow.commit()

    _guarded(run)
    emit({"provider": name, "secret": value}, as_json,
         lambda d: console.print(f"callback secret of {name}: {d['secret']}"))
