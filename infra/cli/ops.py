"""Operator commands: migrate, worker, send, queues, dead letters."""

from __future__ import annotations

import json
import os
import sys
import uuid

import click
import dramatiq

from infra import rabbit
from infra.cli.output import emit, fail, json_option, table
from infra.contract import ACTORS, parse
from domain.auth import IDENTITY_FIELDS
from domain.errors import InvalidCommand


def register(cli: click.Group) -> None:
    cli.add_command(migrate)
    cli.add_command(worker)
    cli.add_command(send)
    cli.add_command(queues)
    cli.add_command(dlq)


@click.command()
@json_option
def migrate(as_json: bool) -> None:
    """Bring the database to head, seed reference data, declare every queue."""
    from infra.broker import build_broker, declare_topology
    from infra.db.migrate import upgrade

    revision = upgrade()
    from infra.auth import ensure_ballast_key
    from infra.db.engine import get_engine

    signer = ensure_ballast_key(get_engine())
    if signer is None:
        click.echo("warning: no Ballast signing key (BALLAST_SIGNING_KEY_FILE): workers cannot "
                   "sign next steps or scheduled firings", err=True)
    broker = build_broker()
    try:
        declared = declare_topology(broker)
    finally:
        broker.close()
    emit({"revision": revision}, as_json,
         lambda d: click.echo(f"database at revision {d['revision']}; {len(declared)} queues declared"))


@click.command()
@click.option("--processes", "-p", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", "-t", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--queues", "-Q", multiple=True, help="Only these queues (repeatable).")
def worker(processes: int, threads: int, queues: tuple[str, ...]) -> None:
    """Run the workers (Dramatiq processes consuming every queue, or --queues)."""
    from infra.contract import QUEUES

    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        fail(f"unknown queue(s): {', '.join(unknown)}", 2)
    args = [sys.executable, "-m", "dramatiq", "actors", "--processes", str(processes),
            "--threads", str(threads)]
    if queues:
        args += ["--queues", *queues]
    from infra.settings import get_settings

    port = get_settings().metrics_port
    if port:
        # Read by Dramatiq's exposition server, which the main process forks.
        os.environ["dramatiq_prom_port"] = str(port)
        os.environ.setdefault("dramatiq_prom_db", f"/tmp/ballast-prometheus-{port}")
        os.makedirs(os.environ["dramatiq_prom_db"], exist_ok=True)
    os.execv(sys.executable, args)


@click.command()
@click.argument("actor")
@click.option("--kwargs", "kwargs_json", required=True, help="The message kwargs as JSON.")
@json_option
def send(actor: str, kwargs_json: str, as_json: bool) -> None:
    """Validate a command and publish it (confirmed) to its queue.

    Without a request_id one is generated; pass your own to make a resend idempotent.
    """
    if actor not in ACTORS:
        fail(f"unknown actor {actor!r}; known: {', '.join(sorted(ACTORS))}", 2)
    try:
        kwargs = json.loads(kwargs_json)
    except ValueError as exc:
        fail(f"--kwargs is not JSON: {exc}", 2)
    if not isinstance(kwargs, dict):
        fail("--kwargs must be a JSON object", 2)
    kwargs.setdefault("request_id", f"cli-{uuid.uuid4()}")
    spec = ACTORS[actor]
    from infra.auth import operator_signer
    from infra.broker import build_broker
    from infra.settings import get_settings

    signer = operator_signer()
    if signer is not None:
        # An identity the command names is the operator's own unless given.
        for field in IDENTITY_FIELDS:
            if field in spec.schema.model_fields:
                kwargs.setdefault(field, signer.producer)
    elif get_settings().auth == "require":
        fail("no operator key to sign with: set BALLAST_OPERATOR_KEY or BALLAST_OPERATOR_KEY_FILE", 2)
    try:
        parse(spec.schema, kwargs)
    except InvalidCommand as exc:
        fail(str(exc), 2)
    message = dramatiq.Message(queue_name=spec.queue, actor_name=actor, args=(), kwargs=kwargs,
                               options={})
    broker = build_broker()
    try:
        msg = broker.enqueue(signer.sign(message) if signer is not None else message)
    finally:
        broker.close()
    emit({"message_id": msg.message_id, "queue": spec.queue}, as_json,
         lambda d: click.echo(f"sent {actor} as {d['message_id']} to {d['queue']}"))


@click.command()
@json_option
def queues(as_json: bool) -> None:
    """Every queue with its ready, delayed and dead counts and consumers."""
    emit(rabbit.queue_stats(), as_json, lambda rows: table(rows, title="queues"))


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay, purge."""


@dlq.command("list")
@click.argument("queue", required=False)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def dlq_list(queue: str | None, limit: int, as_json: bool) -> None:
    """Dead letters with their one-line reason."""
    _known_queue(queue)
    rows = [dl.summary() for dl in rabbit.list_dead_letters(queue, limit)]
    emit(rows, as_json, lambda r: table(
        r, ["queue", "message_id", "actor", "request_id", "reason", "retries", "failed_at"],
        title="dead letters"))


@dlq.command("show")
@click.argument("message_id")
@json_option
def dlq_show(message_id: str, as_json: bool) -> None:
    """The whole dead message with its reason and traceback."""
    dl = rabbit.find_dead_letter(message_id)
    if dl is None:
        fail(f"no dead letter with message id {message_id}", 1)
    doc = {**dl.summary(), "message": dl.body,
           "traceback": dl.info.get("traceback"), "headers": _plain(dl.headers)}
    emit(doc, as_json, lambda d: (click.echo(json.dumps({k: v for k, v in d.items() if k != "traceback"},
                                                        indent=2, default=str)),
                                  click.echo(d.get("traceback") or "(no traceback)")))


@dlq.command("replay")
@click.argument("queue", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (of QUEUE).")
@click.option("--id", "ids", multiple=True, help="Replay this message id (repeatable).")
@json_option
def dlq_replay(queue: str | None, replay_all: bool, ids: tuple[str, ...], as_json: bool) -> None:
    """Move dead letters back to their queue with the retry count reset."""
    _known_queue(queue)
    if replay_all == bool(ids):
        fail("give exactly one of --all or --id ID", 2)
    from infra.auth import operator_signer

    # The operator's countersignature lets a dead letter older than the signature window
    # through; what its producer signed is kept as it was, and must still verify.
    operator = operator_signer()
    n = rabbit.replay(queue, set(ids) if ids else None,
                      countersign=operator.countersign if operator is not None else None)
    emit({"replayed": n}, as_json, lambda d: click.echo(f"replayed {d['replayed']} message(s)"))


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Really delete the dead letters of QUEUE.")
@json_option
def dlq_purge(queue: str, yes: bool, as_json: bool) -> None:
    """Delete every dead letter of QUEUE (needs --yes)."""
    _known_queue(queue)
    if not yes:
        fail("purge deletes dead letters for good; add --yes", 2)
    n = rabbit.purge(queue)
    emit({"purged": n}, as_json, lambda d: click.echo(f"purged {d['purged']} dead letter(s)"))


def _known_queue(queue: str | None) -> None:
    from infra.contract import QUEUES

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
