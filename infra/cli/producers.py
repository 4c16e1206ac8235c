"""``ballast producers``: who may send what (README, section auth).

Key material is printed once, by ``add``, ``rotate`` and ``init --operator``, on stdout
only; the database keeps public keys.  ``--json`` documents carry it under
``key_material`` in those three answers and nowhere else.

Deliberately not commands of the contract (issue 11): key management writes in the CLI's
own transaction, so key material never travels in a broker message or a dead letter.
"""

from __future__ import annotations

import json
import os

import click

from domain.auth import ROLES, policy_table
from domain.errors import Refused
from infra import auth
from infra.cli.identity import operator_identity
from infra.cli.output import emit, fail, json_option, table
from infra.db.engine import get_engine
from infra.settings import get_settings


def register(cli: click.Group) -> None:
    cli.add_command(producers)


def _material_doc(signer: auth.Signer, extra: dict) -> dict:
    return {**extra, "key_id": signer.key_id, "key_material": signer.material()}


def _print_material(doc: dict) -> None:
    m = doc["key_material"]
    # Only the key document goes to stdout, so `... > name.json` makes the key file.
    click.echo(f"producer {m['producer']}, key {m['key_id']}: key material below, shown once; "
               "keep it secret and give it to the producer as a file or an environment variable",
               err=True)
    click.echo(json.dumps(m))


@click.group()
def producers() -> None:
    """Producers: who may send commands, with which roles and keys."""


@producers.command("add")
@click.argument("name")
@click.option("--role", "roles", multiple=True, required=True,
              type=click.Choice([r for r in ROLES if r != "ballast"]), help="Repeatable.")
@click.option("--by", required=True, help="The operator doing it (must be the signer).")
@json_option
def add(name: str, roles: tuple[str, ...], by: str, as_json: bool) -> None:
    """Make a producer with a fresh Ed25519 key; prints its key material once."""
    if not auth.PRODUCER_NAME.fullmatch(name):
        fail("a producer's name is 1-64 of A-Z a-z 0-9 _ . @ -", 2)
    operator_identity(by)
    try:
        with get_engine().begin() as conn:
            signer = auth.add_producer(conn, name, roles, by)
    except Refused as exc:
        fail(str(exc), 1)
    emit(_material_doc(signer, {"name": name, "roles": list(roles)}), as_json, _print_material)


@producers.command("list")
@json_option
def list_(as_json: bool) -> None:
    """Every producer, its roles and keys (ids and validity, never key material)."""
    with get_engine().connect() as conn:
        rows = auth.list_producers(conn)

    def human(rows):
        table([{"name": r["name"], "roles": ",".join(r["roles"]),
                "active keys": ",".join(k["key_id"] for k in r["keys"] if k["active"]),
                "revoked_at": r["revoked_at"], "created_by": r["created_by"]} for r in rows],
              title="producers")
    emit(rows, as_json, human)


@producers.command("rotate")
@click.argument("name")
@click.option("--overlap", default="1h", show_default=True,
              help="How long the old keys stay valid: 90s, 30m, 1h, 2d.")
@click.option("--by", required=True)
@json_option
def rotate(name: str, overlap: str, by: str, as_json: bool) -> None:
    """A new key; the old ones stay valid for --overlap.  Prints the new key material once."""
    seconds = _duration_s(overlap)
    operator_identity(by)
    try:
        with get_engine().begin() as conn:
            signer = auth.rotate_key(conn, name, seconds, by)
    except Refused as exc:
        fail(str(exc), 1)
    emit(_material_doc(signer, {"name": name, "overlap_s": seconds}), as_json, _print_material)


@producers.command("revoke")
@click.argument("name")
@click.option("--key", "key_id", help="Revoke only this key (default: the producer and all its keys).")
@click.option("--by", required=True)
@json_option
def revoke(name: str, key_id: str | None, by: str, as_json: bool) -> None:
    """Revoke a producer or one of its keys: effective at once."""
    operator_identity(by)
    try:
        with get_engine().begin() as conn:
            revoked = auth.revoke(conn, name, by, key_id)
    except Refused as exc:
        fail(str(exc), 1)
    emit({"name": name, "revoked_keys": revoked}, as_json,
         lambda d: click.echo(f"revoked {name}: {', '.join(d['revoked_keys']) or 'no key left'}"))


@producers.command("roles")
@json_option
def roles(as_json: bool) -> None:
    """The policy: which actors each role may send."""
    emit(policy_table(), as_json, lambda rows: table(
        [{"role": r["role"], "may send": ", ".join(r["actors"]),
          "conditions": "; ".join(r["conditions"])} for r in rows], title="roles"))


@producers.command("audit")
@click.argument("name", required=False)
@json_option
def audit(name: str | None, as_json: bool) -> None:
    """Every change to producers and keys, with who did it."""
    with get_engine().connect() as conn:
        rows = auth.audit_of(conn, name)
    emit(rows, as_json, lambda r: table(r, ["at", "producer", "action", "key_id", "performed_by"],
                                        title="producer audit"))


@producers.command("init")
@click.option("--key-file", help="Where Ballast's own key lives (default BALLAST_SIGNING_KEY_FILE); "
                                 "made if missing.")
@click.option("--operator", help="Also make the first operator (only while there is none); "
                                 "prints its key material once.")
@json_option
def init(key_file: str | None, operator: str | None, as_json: bool) -> None:
    """Ballast's own producer and key, and optionally the first operator."""
    if key_file:
        os.environ["BALLAST_SIGNING_KEY_FILE"] = key_file
        get_settings.cache_clear()
    signer = auth.ensure_ballast_key(get_engine(), by="ballast producers init")
    if signer is None:
        fail("no key: give --key-file or set BALLAST_SIGNING_KEY_FILE", 2)
    doc: dict = {"ballast_key_id": signer.key_id}
    if operator:
        if not auth.PRODUCER_NAME.fullmatch(operator):
            fail("a producer's name is 1-64 of A-Z a-z 0-9 _ . @ -", 2)
        with get_engine().begin() as conn:
            from sqlalchemy import text

            conn.execute(text("LOCK TABLE producers IN EXCLUSIVE MODE"))
            if conn.execute(text("SELECT 1 FROM producers WHERE 'operator' = ANY(roles) "
                                 "AND revoked_at IS NULL")).first():
                fail("an operator exists already: `ballast producers add` (as an operator)", 1)
            first = auth.add_producer(conn, operator, ["operator"], by="ballast producers init")
        doc = _material_doc(first, doc)

    def human(d):
        click.echo(f"ballast key {d['ballast_key_id']} registered", err=True)
        if "key_material" in d:
            _print_material(d)
    emit(doc, as_json, human)


def _duration_s(text_: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = int(text_[:-1]), text_[-1]
        return value * units[unit]
    except (ValueError, KeyError, IndexError):
        if text_.isdigit():
            return int(text_)
        fail(f"--overlap {text_!r}: a number with s, m, h or d (e.g. 1h)", 2)
        raise  # unreachable
