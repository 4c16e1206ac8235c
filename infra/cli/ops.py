"""Operator commands: migrate, worker, send, queues, dead letters."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import click

from domain.auth import IDENTITY_FIELDS
from domain.errors import InvalidCommand
from infra import deadletter_log, outbox, queue_migration, rabbit, rabbit_admin, retention
from infra.auth import ensure_ballast_key, operator_signer
from infra.broker import build_broker, declare_topology
from infra.cli.levers import by_option, check_by, confirm, lever_options, record
from infra.cli.output import emit, fail, heading, json_option, progress, table, width
from infra.cli.output import record as show_record
from infra.commands import send_command
from infra.contract import ACTORS, QUEUES, parse
from infra.db.engine import get_engine, get_read_engine
from infra.settings import get_settings


def register(cli: click.Group) -> None:
    cli.add_command(migrate)
    cli.add_command(worker)
    cli.add_command(send)
    cli.add_command(queues)
    cli.add_command(dlq)
    cli.add_command(outbox_group)


@click.command()
@json_option
def migrate(as_json: bool) -> None:
    """Bring the database to head, seed reference data, declare every queue."""
    # Lazy for the CLI's start-up (tests/test_imports.py, CLI_LAZY): alembic, for this only.
    from infra.db.migrate import upgrade

    with progress("migrate") as advance:
        revision = upgrade(progress=advance)
    signer = ensure_ballast_key(get_engine())
    if signer is None:
        click.echo("warning: no Ballast signing key (BALLAST_SIGNING_KEY_FILE): workers cannot "
                   "sign next steps or scheduled firings", err=True)
    from dramatiq.errors import ConnectionClosed

    broker = build_broker()
    try:
        declared = declare_topology(broker)
    except ConnectionClosed as exc:
        if "inequivalent arg" not in str(exc):
            raise
        to = get_settings().queue_type
        fail(f"the queues exist with another type or arguments than BALLAST_QUEUE_TYPE={to} "
             f"declares: move them with `ballast queues migrate --to {to} --by NAME` "
             "(workers, scheduler and publishers stopped)", 1)
    finally:
        broker.close()
    emit({"revision": revision}, as_json,
         lambda d: click.echo(f"database at revision {d['revision']}; {len(declared)} queues declared"))


def complete_queue(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion: Ballast's queue names."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(q) for q in QUEUES if q.startswith(incomplete)]


def complete_actor(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion: Ballast's actor names (with their queue as help)."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(name, help=spec.queue) for name, spec in sorted(ACTORS.items())
            if name.startswith(incomplete)]


@click.command(context_settings={"show_default": True})
@click.option("--processes", "-p", default=2, type=click.IntRange(1, 64),
              help="Worker processes.")
@click.option("--threads", "-t", default=4, type=click.IntRange(1, 64),
              help="Worker threads per process.")
@click.option("--queues", "-Q", multiple=True, shell_complete=complete_queue,
              help="Only these queues: --queues A B, or -Q A -Q B.")
@click.argument("more_queues", nargs=-1, metavar="[QUEUE]...", shell_complete=complete_queue)
@click.option("--worker-shutdown-timeout", type=click.IntRange(0, None), default=None,
              help="Milliseconds the workers get to finish on shutdown (Dramatiq's default: "
                   "10 minutes).")
@click.option("--worker-fork-timeout", type=click.IntRange(0, None), default=None,
              help="Milliseconds to wait for the worker processes to come online.")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None,
              help="Write the main process's pid to this file.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Write the log lines to this file instead of stderr.")
@click.option("--use-spawn", is_flag=True, help="Start processes by spawning instead of fork.")
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Development only: reload the workers when a source file under DIR changes.")
@click.option("--watch-use-polling", is_flag=True,
              help="With --watch: poll the file system instead of its change events.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of this pool's Prometheus exposition (default BALLAST_METRICS_PORT; "
                   "0 turns it off); give each pool on one host its own.")
@click.option("--verbose", "-v", is_flag=True, help="Dramatiq's verbose (debug) log lines.")
def worker(processes: int, threads: int, queues: tuple[str, ...], more_queues: tuple[str, ...],
           worker_shutdown_timeout: int | None, worker_fork_timeout: int | None,
           pid_file: str | None, log_file: str | None, use_spawn: bool, watch_dir: str | None,
           watch_use_polling: bool, metrics_port: int | None, verbose: bool) -> None:
    """Run the workers: Dramatiq processes consuming every queue, or only --queues A B.

    The other options are Dramatiq's own, passed through.
    """
    if more_queues and not queues:
        fail(f"unexpected argument {more_queues[0]!r}: queues are named after --queues", 2)
    queues = (*queues, *more_queues)
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        fail(f"unknown queue(s): {', '.join(unknown)}", 2)
    if watch_use_polling and not watch_dir:
        fail("--watch-use-polling goes with --watch DIR", 2)
    # infra.worker is Dramatiq's CLI with Ballast's bounded JSON log lines in every process.
    args = [sys.executable, "-m", "infra.worker", "actors", "--processes", str(processes),
            "--threads", str(threads)]
    for flag, value in (("--worker-shutdown-timeout", worker_shutdown_timeout),
                        ("--worker-fork-timeout", worker_fork_timeout),
                        ("--pid-file", pid_file), ("--log-file", log_file),
                        ("--watch", watch_dir)):
        if value is not None:
            args += [flag, str(value)]
    for flag, on in (("--use-spawn", use_spawn), ("--watch-use-polling", watch_use_polling),
                     ("--verbose", verbose)):
        if on:
            args.append(flag)
    if queues:
        args += ["--queues", *dict.fromkeys(queues)]
    port = get_settings().metrics_port if metrics_port is None else metrics_port
    os.environ["BALLAST_METRICS_PORT"] = str(port)  # what the worker processes read
    # infra.worker prepares the pool's metrics directory and port (BALLAST_METRICS_*).
    os.execv(sys.executable, args)


@click.command()
@click.argument("actor", shell_complete=complete_actor)
@click.option("--kwargs", "kwargs_json", required=True,
              help="The message kwargs as JSON; @FILE reads them from FILE, - from stdin.")
@json_option
def send(actor: str, kwargs_json: str, as_json: bool) -> None:
    """Validate a command and publish it (confirmed) to its queue.

    Without a request_id one is generated; pass your own to make a resend idempotent.
    """
    if actor not in ACTORS:
        fail(f"unknown actor {actor!r}; known: {', '.join(sorted(ACTORS))}", 2)
    kwargs_json = _read_kwargs(kwargs_json)
    try:
        kwargs = json.loads(kwargs_json)
    except ValueError as exc:
        fail(f"--kwargs is not JSON: {exc}", 2)
    if not isinstance(kwargs, dict):
        fail("--kwargs must be a JSON object", 2)
    try:
        msg = send_command(actor, kwargs)
    except InvalidCommand as exc:
        fail(str(exc), 2)
    emit({"message_id": msg.message_id, "queue": msg.queue}, as_json,
         lambda d: click.echo(f"sent {actor} as {d['message_id']} to {d['queue']}"))


def _read_kwargs(value: str) -> str:
    """``--kwargs``: JSON text, ``@FILE`` or ``-`` (stdin)."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            fail(f"--kwargs {value}: cannot read {path}: {exc.strerror or exc}", 2)
    return value


@click.group(invoke_without_command=True)
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (a terminal only).")
@click.option("--every", default=2.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between refreshes with --watch.")
@json_option
@click.pass_context
def queues(ctx: click.Context, watch: bool, every: float, as_json: bool) -> None:
    """Every queue: ready, in flight (unacked), delayed, dead, consumers, rates.

    From RabbitMQ's management API when it is reachable (BALLAST_RABBITMQ_API_URL), else
    over plain AMQP, which sees only messages ready for delivery (columns say so).
    `queues migrate --to quorum` moves the queues to another type.
    """
    import time

    if ctx.invoked_subcommand is not None:
        return
    if watch and (as_json or not sys.stdout.isatty()):
        fail("--watch is for a terminal; without it the command prints once", 2)
    while True:
        rows = queue_rows()
        if watch:
            click.clear()
        emit(rows, as_json, _queues_table)
        if not watch:
            return
        time.sleep(every)


# ``queues migrate``, ``dlq replay`` and ``dlq purge`` are deliberately not commands of the
# contract (issue 11): they act on RabbitMQ itself (a command would travel through the
# queues they move, replay or empty); only their operator_actions line is written here.

@queues.command("migrate")
@click.option("--to", "to", required=True, type=click.Choice(["quorum", "classic"]),
              help="The queue type every Ballast queue (with .DQ and .XQ) becomes.")
@by_option
@lever_options
@json_option
def queues_migrate(to: str, by: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Move every Ballast queue (with its .DQ and .XQ) to another queue type, keeping every
    message: each is moved to a holding queue (confirmed before acknowledged), the queue is
    declared again with the new type and the messages are moved back.  Stop the workers,
    the scheduler and the publishers first; then set BALLAST_QUEUE_TYPE everywhere."""
    check_by(by)
    plans = queue_migration.plan(to)
    todo = [p for p in plans if p.state in ("migrate", "resume")]
    summary = {"to": to, "queues": [p.as_dict() for p in plans],
               "would_migrate": len(todo),
               "would_move": sum(p.messages + p.held for p in todo)}
    if dry_run:
        emit({"dry_run": True, **summary}, as_json, lambda d: click.echo(
            f"dry run: would move {d['would_migrate']} queue(s) to {to} "
            f"({d['would_move']} message(s) kept); "
            f"{sum(p.state == 'ok' for p in plans)} already {to}"))
        return
    if not todo:
        emit({"migrated": 0, "moved": 0, "to": to, "queues": summary["queues"]}, as_json,
             lambda d: click.echo(f"every Ballast queue is already {to}: nothing done"))
        return
    confirm(f"Move {len(todo)} queue(s) to {to}, {summary['would_move']} message(s) kept", yes)
    try:
        outcome = queue_migration.migrate(to)
    except queue_migration.MigrationRefused as exc:
        fail(str(exc), 1)
    migrated = [q for q in outcome.queues if q["state"] == "migrated"]
    with get_engine().begin() as conn:
        record(conn, by, "queues migrate", to, {"queues": [q["queue"] for q in migrated],
                                               "moved": outcome.moved})
    emit({"migrated": len(migrated), "moved": outcome.moved, "to": to,
          "queues": outcome.queues}, as_json,
         lambda d: click.echo(f"moved {d['migrated']} queue(s) to {to} with {d['moved']} "
                              f"message(s); set BALLAST_QUEUE_TYPE={to} for every process"))


def queue_rows() -> list[dict]:
    """The management API's counts, or AMQP's with the columns it cannot see as None."""
    rows = rabbit_admin.queue_stats()
    if rows is not None:
        return rows
    return [r | {"unacked": None, "publish_rate": None, "ack_rate": None, "source": "amqp"}
            for r in rabbit.queue_stats()]


def _queues_table(rows: list[dict]) -> None:
    if rows and rows[0]["source"] == "amqp":
        table([{"queue": r["queue"], "ready": r["ready"], "delayed (ready)": r["delayed"],
                "dead (ready)": r["dead"], "consumers": r["consumers"]} for r in rows],
              title="queues (over AMQP: messages ready only)")
        note = ("in-flight, unacknowledged and held delayed messages are not visible over "
                "AMQP; enable the management plugin or set BALLAST_RABBITMQ_API_URL")
        # One line for scripts reading stderr; folded to the width on a terminal.
        click.echo("\n".join(textwrap.wrap(note, width())) if sys.stderr.isatty() else note,
                   err=True)
        return
    rates = any(r["publish_rate"] is not None or r["ack_rate"] is not None for r in rows)
    table([{"queue": r["queue"], "ready": r["ready"], "unacked": r["unacked"],
            "delayed": r["delayed"], "dead": r["dead"], "consumers": r["consumers"]}
           | ({"in/s": f"{r['publish_rate'] or 0:.1f}", "ack/s": f"{r['ack_rate'] or 0:.1f}"}
              if rates else {}) for r in rows],
          title="queues (management API)")


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay, purge."""


@dlq.command("list")
@click.argument("queue", required=False, shell_complete=complete_queue)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--actor", help="Only this actor's.", shell_complete=complete_actor)
@click.option("--code", help="Only this code (refused, invalid, transient, ...).")
@click.option("--since", help="Only dead-lettered since: ISO 8601 time or an age (90m, 2h, 7d).")
@click.option("--grep", "grep", help="Only those whose reason, traceback or body contain TEXT.")
@click.option("--history", is_flag=True,
              help="From the durable log in PostgreSQL: replayed, purged and expired ones too.")
@json_option
def dlq_list(queue: str | None, limit: int, actor: str | None, code: str | None,
             since: str | None, grep: str | None, history: bool, as_json: bool) -> None:
    """Dead letters with their one-line reason (those in RabbitMQ, or --history)."""
    _known_queue(queue)
    try:
        after = deadletter_log.parse_since(since) if since else None
    except ValueError as exc:
        fail(str(exc), 2)
    columns = ["queue", "message_id", "actor", "request_id", "reason", "retries", "failed_at"]
    if history:
        with get_read_engine().connect() as conn:
            rows = deadletter_log.history(conn, queue=queue, actor=actor, code=code, since=after,
                                          grep=grep, limit=limit)
        columns += ["status", "resolved_by"]
    else:
        filtered = bool(actor or code or after or grep)
        letters = rabbit.list_dead_letters(queue, 10_000 if filtered else limit)
        rows = [dl.summary() | {"code": dl.info.get("code")} for dl in letters]
        rows = [r for r, dl in zip(rows, letters)
                if deadletter_log.matches(r, dl.body, actor=actor, code=code, since=after,
                                          grep=grep)][:limit]
    emit(rows, as_json, lambda r: table(
        r, columns, title="dead letters", headers={"retries": "tries"},
        detail=["queue", "request_id", "reason"] + (["status", "resolved_by"] if history else [])))


@dlq.command("show")
@click.argument("message_id")
@json_option
def dlq_show(message_id: str, as_json: bool) -> None:
    """The whole dead message with its reason and traceback (from the log once RabbitMQ
    has expired it)."""
    dl = rabbit.find_dead_letter(message_id)
    if dl is not None:
        doc = {**dl.summary(), "code": dl.info.get("code"), "message": dl.body,
               "traceback": dl.info.get("traceback"), "headers": _plain(dl.headers),
               "source": "rabbitmq"}
    else:
        with get_read_engine().connect() as conn:
            rec = deadletter_log.find(conn, message_id)
        if rec is None:
            fail(f"no dead letter with message id {message_id}", 1)
        doc = {"queue": rec["queue"], "message_id": rec["message_id"], "actor": rec["actor"],
               "request_id": rec["request_id"], "reason": rec["reason"],
               "retries": rec["retries"], "failed_at": rec["dead_lettered_at"].isoformat(),
               "code": rec["code"], "message": rec["body"], "traceback": rec["traceback"],
               "headers": {}, "source": "log", "status": rec["status"],
               "resolved_by": rec["resolved_by"],
               "resolved_at": rec["resolved_at"].isoformat() if rec["resolved_at"] else None}

    def human(d):
        summary = {k: d.get(k) for k in ("queue", "message_id", "actor", "request_id", "code",
                                         "reason", "retries", "failed_at", "source", "status",
                                         "resolved_by", "resolved_at") if k in d}
        show_record(summary, title="dead letter")
        message = _without_traceback(d["message"])
        if isinstance(message, dict) and "kwargs" in message:
            heading("kwargs")
            click.echo(json.dumps(message["kwargs"], indent=2, default=str, ensure_ascii=False))
            rest = {k: v for k, v in message.items() if k not in ("kwargs", "args")}
        else:
            rest = message
        heading("message")
        click.echo(json.dumps(rest, indent=2, default=str, ensure_ascii=False))
        if d.get("headers"):
            heading("headers")
            click.echo(json.dumps(_without_traceback(d["headers"]), indent=2, default=str))
        heading("traceback")
        click.echo(d.get("traceback") or "(no traceback)")

    emit(doc, as_json, human)


def _without_traceback(body):
    """The message as printed for people: its traceback is printed once, below it."""
    if not isinstance(body, dict) or not isinstance(body.get("options"), dict):
        return body
    options = dict(body["options"])
    if isinstance(options.get("dead_letter"), dict):
        options["dead_letter"] = {k: v for k, v in options["dead_letter"].items()
                                  if k != "traceback"}
    options.pop("traceback", None)
    if isinstance(options.get("ballast_auth"), dict):  # who signed it, not the signature
        options["ballast_auth"] = {k: v for k, v in options["ballast_auth"].items()
                                   if k != "signature"}
    return {**body, "options": options}


@dlq.command("replay")
@click.argument("queue", required=False, shell_complete=complete_queue)
@click.option("--all", "replay_all", is_flag=True,
              help="Replay every dead letter (of QUEUE; without QUEUE, of every queue): asks first.")
@click.option("--id", "ids", multiple=True,
              help="Replay this message id (repeatable); from the log once RabbitMQ expired it.")
@by_option
@lever_options
@json_option
def dlq_replay(queue: str | None, replay_all: bool, ids: tuple[str, ...], by: str, yes: bool,
               dry_run: bool, as_json: bool) -> None:
    """Move dead letters back to their queue with the retry count reset."""
    _known_queue(queue)
    check_by(by)
    if replay_all == bool(ids):
        fail("give exactly one of --all or --id ID", 2)
    queues = [queue] if queue else list(QUEUES)
    if dry_run:
        counts = _would_replay(queues, set(ids) if ids else None)
        emit({"dry_run": True, "replayed": 0, "would_replay": sum(counts.values()),
              "queues": counts}, as_json,
             lambda d: _per_queue(d["queues"], f"dry run: would replay {d['would_replay']} "
                                                "dead letter(s)"))
        return
    waiting: dict[str, int] = {}
    if replay_all:
        waiting = {q: n for q, n in rabbit.dead_letter_counts().items() if q in queues and n}
        confirm(f"Replay {sum(waiting.values())} dead letter(s) of "
                f"{queue or f'{len(waiting)} queue(s)'}", yes)
    # The operator's countersignature lets a dead letter older than the signature window
    # through; what its producer signed is kept as it was, and must still verify.
    operator = operator_signer()
    countersign = operator.countersign if operator is not None else None
    counts: dict[str, int] = {}
    replayed: list[dict] = []
    expected = sum(waiting.values()) if replay_all else len(ids)
    with progress("dlq replay", total=expected) as advance:
        def done(dl):
            replayed.append(dl.body)
            advance()

        for q in queues:
            n = rabbit.replay(q, set(ids) if ids else None, on_replayed=done,
                              countersign=countersign)
            if n:
                counts[q] = n
    if ids:  # what RabbitMQ no longer holds (expired from Q.XQ) is replayed from the log
        missing = set(ids) - {b.get("message_id") for b in replayed}
        with get_engine().connect() as conn:
            from_log = [r for r in deadletter_log.live(conn, missing) if r["queue"] in queues]
        for r in from_log:
            body = rabbit.replay_body(r["body"], r["queue"])
            rabbit.publish_confirmed(r["queue"], countersign(body) if countersign else body)
            replayed.append(r["body"])
            counts[r["queue"]] = counts.get(r["queue"], 0) + 1
    with get_engine().begin() as conn:
        deadletter_log.mark_replayed(conn, replayed, by)
        record(conn, by, "dlq replay", queue, {"all": replay_all, "ids": list(ids), "queues": counts})
    emit({"replayed": sum(counts.values()), "queues": counts}, as_json,
         lambda d: _per_queue(d["queues"], f"replayed {d['replayed']} message(s)"))


def _would_replay(queues: list[str], ids: set[str] | None) -> dict[str, int]:
    if ids is None:
        return {q: n for q, n in rabbit.dead_letter_counts().items() if q in queues and n}
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for dl in rabbit.list_dead_letters(None, 100_000):
        if dl.queue in queues and dl.message_id in ids:
            counts[dl.queue] = counts.get(dl.queue, 0) + 1
            seen.add(dl.message_id)
    with get_engine().connect() as conn:
        for r in deadletter_log.live(conn, ids - seen):
            if r["queue"] in queues:
                counts[r["queue"]] = counts.get(r["queue"], 0) + 1
    return counts


def _per_queue(counts: dict[str, int], headline: str) -> None:
    click.echo(headline)
    for q, n in counts.items():
        click.echo(f"  {q:<32} {n:>8}")


@dlq.command("purge")
@click.argument("queue", shell_complete=complete_queue)
@by_option
@lever_options
@json_option
def dlq_purge(queue: str, by: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Delete every dead letter of QUEUE for good: asks first (--yes in scripts)."""
    _known_queue(queue)
    check_by(by)
    waiting = rabbit.dead_letter_counts().get(queue, 0)
    if dry_run:
        emit({"dry_run": True, "purged": 0, "would_purge": waiting}, as_json,
             lambda d: click.echo(f"dry run: would purge {waiting} dead letter(s) of {queue}"))
        return
    confirm(f"Delete {waiting} dead letter(s) of {queue} for good", yes)
    n = rabbit.purge(queue)
    with get_engine().begin() as conn:
        logged = deadletter_log.mark_purged(conn, queue, by)
        record(conn, by, "dlq purge", queue, {"purged": n, "log_rows": logged})
    emit({"purged": n}, as_json, lambda d: click.echo(f"purged {d['purged']} dead letter(s)"))


def _known_queue(queue: str | None) -> None:
    if queue is not None and queue not in QUEUES:
        fail(f"unknown queue {queue!r}", 2)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- outbox and retention --------------------------------------------------------------

@click.group("outbox", invoke_without_command=True)
@click.option("--pending", is_flag=True, help="List the rows not yet published, oldest first.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@click.pass_context
def outbox_group(ctx: click.Context, pending: bool, limit: int, as_json: bool) -> None:
    """The outbox: its backlog and oldest age, what retention keeps (and prune)."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlalchemy import text

    with get_read_engine().connect() as conn:
        if pending:
            rows = [{"id": r.id, "kind": r.kind, "routing_key": r.routing_key,
                     "created_at": r.created_at.isoformat(timespec="seconds"),
                     "attempts": r.attempts, "last_error": r.last_error}
                    for r in conn.execute(text(
                        "SELECT id, kind, routing_key, created_at, attempts, last_error FROM outbox "
                        "WHERE published_at IS NULL ORDER BY id LIMIT :n"), {"n": limit})]
            emit(rows, as_json, lambda r: table(r, title="outbox: not yet published"))
            return
        out_s, req_s = retention.windows(get_settings())
        oldest = outbox.oldest_pending(conn)
        age = conn.execute(text("SELECT extract(epoch FROM now() - :t)"), {"t": oldest}).scalar_one() \
            if oldest else None
        doc = {"pending": outbox.pending_count(conn),
               "oldest_pending_at": oldest.isoformat(timespec="seconds") if oldest else None,
               "oldest_pending_age_s": int(age) if age is not None else None,
               "published": conn.execute(text(
                   "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")).scalar_one(),
               "retention_days": out_s // retention.DAY_S,
               "prunable": outbox.prunable(conn, out_s),
               "requests_retention_days": req_s // retention.DAY_S,
               "requests_prunable": retention.prunable_requests(conn, req_s)}

    def human(d):
        click.echo(f"pending   {d['pending']:>10}" + (
            f"   oldest {d['oldest_pending_at']} ({d['oldest_pending_age_s']} s ago)"
            if d["oldest_pending_at"] else ""))
        click.echo(f"published {d['published']:>10}   kept {d['retention_days']} days; "
                   f"{d['prunable']} older")
        click.echo(f"request ids kept {d['requests_retention_days']} days; "
                   f"{d['requests_prunable']} older")

    emit(doc, as_json, human)


# ``outbox prune`` is housekeeping of the transport's own tables (published outbox rows,
# remembered request ids: the memory a command's claim writes to), not a lever on state;
# the scheduled ``prune_retention`` step does the same.  It runs here, as before.
@outbox_group.command("prune")
@click.option("--older-than", "older_than",
              help="Published rows older than this age (90m, 12h, 30d); default the retention.")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@json_option
def outbox_prune(older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete published outbox rows (never a pending one) and remembered request ids past
    their windows, as the hourly retention schedule does."""
    out_s, req_s = retention.windows(get_settings())
    if older_than is not None:
        age = retention.parse_age(older_than)
        if age is None or age <= 0:
            fail(f"--older-than {older_than!r}: an age like 90m, 12h, 30d", 2)
        out_s = age
    if dry_run:
        with get_engine().connect() as conn:
            doc = {"dry_run": True, "outbox_pruned": 0, "requests_pruned": 0,
                   "would_prune_outbox": outbox.prunable(conn, out_s),
                   "would_prune_requests": retention.prunable_requests(conn, req_s),
                   "older_than_s": out_s, "requests_older_than_s": req_s}
        emit(doc, as_json, lambda d: click.echo(
            f"dry run: would delete {d['would_prune_outbox']} published outbox row(s) and "
            f"{d['would_prune_requests']} request id(s)"))
        return
    done = retention.run(get_engine(), get_settings(), out_s)
    emit({"outbox_pruned": done.outbox, "requests_pruned": done.requests, "older_than_s": out_s,
          "requests_older_than_s": req_s}, as_json,
         lambda d: click.echo(f"deleted {d['outbox_pruned']} published outbox row(s) and "
                              f"{d['requests_pruned']} request id(s)"))
