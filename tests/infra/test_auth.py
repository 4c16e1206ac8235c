"""Signing and the producers table on the run's PostgreSQL: the CONTRACT.md example, the
README snippets, tampering, rotation and revocation, the CLI, signed webhooks."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import dramatiq
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from domain.auth import canonical_bytes
from domain.errors import Refused, Unauthorized
from infra import auth
from tests.harness import CLI_OPERATOR, ROOT, uid

CONTRACT = (ROOT / "docs" / "CONTRACT.md").read_text()
README = (ROOT / "README.md").read_text()


def example() -> dict[str, str]:
    block = CONTRACT.split("**Worked example**", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def example_material() -> dict[str, str]:
    ex = example()
    seed = base64.b64decode(ex["private key (base64 of the raw 32 bytes)"])
    signer = auth.Signer(ex["producer"], ex["key_id"], Ed25519PrivateKey.from_private_bytes(seed))
    return signer.material()


def snippet(language: str, after: str) -> str:
    section = README.split("<!-- section:auth -->", 1)[1]
    return section.split(after, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


# --- the contract's worked example ---------------------------------------------------------

def test_the_contracts_worked_example_verifies():
    ex = example()
    kwargs = json.loads(ex["kwargs"])
    data = canonical_bytes(queue=ex["queue"], actor=ex["actor"], kwargs=kwargs,
                           signed_at=int(ex["signed_at"]), producer=ex["producer"], key_id=ex["key_id"])
    assert data == ex["canonical bytes (233 bytes of UTF-8)"].encode("utf-8")
    assert len(data) == 233
    public = ex["public key (base64 of the raw 32 bytes)"]
    assert auth.key_id_of(base64.b64decode(public)) == ex["key_id"]
    auth.verify_signature(public, data, ex["signature"], ex["producer"])  # raises if not
    signer = auth.Signer.from_material(json.dumps(example_material()))
    assert signer.auth(ex["queue"], ex["actor"], kwargs, int(ex["signed_at"]))["signature"] == ex["signature"]


def test_the_readme_python_snippet_signs_the_contracts_example():
    ex = example()
    scope: dict = {}
    import os

    os.environ["BALLAST_KEY"] = json.dumps(example_material())
    try:
        exec(snippet("python", "**Signing, in Python**"), scope)
    finally:
        del os.environ["BALLAST_KEY"]
    got = scope["sign"](ex["queue"], ex["actor"], json.loads(ex["kwargs"]), int(ex["signed_at"]))
    assert got == {"producer": ex["producer"], "key_id": ex["key_id"],
                   "signed_at": int(ex["signed_at"]), "signature": ex["signature"]}


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_readme_node_snippet_signs_the_contracts_example(tmp_path):
    ex = example()
    script = tmp_path / "sign.js"
    script.write_text(snippet("js", "**Signing, in Node.js**") + (
        f"\nconsole.log(JSON.stringify(sign({json.dumps(ex['queue'])}, {json.dumps(ex['actor'])}, "
        f"{ex['kwargs']}, {ex['signed_at']})));\n"))
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60,
                         env={"BALLAST_KEY": json.dumps(example_material()), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["signature"] == ex["signature"]


# --- tampering -------------------------------------------------------------------------------

SIGNER = auth.Signer.generate("prop")
json_leaf = st.one_of(st.integers(-10**15, 10**15), st.text(max_size=8), st.booleans(), st.none())
kwargs_st = st.dictionaries(st.text(min_size=1, max_size=6), st.one_of(
    json_leaf, st.lists(json_leaf, max_size=3), st.dictionaries(st.text(max_size=3), json_leaf, max_size=3)),
    min_size=1, max_size=6)


def exact(value) -> str:
    """Equality as JSON sees it (``1``, ``1.0`` and ``true`` are three things)."""
    return json.dumps(value, sort_keys=True)


def verifies(msg: dramatiq.Message, signed: dramatiq.Message) -> bool:
    a = signed.options[auth.OPTION]
    data = canonical_bytes(queue=msg.queue_name, actor=msg.actor_name, kwargs=msg.kwargs,
                           signed_at=a["signed_at"], producer=a["producer"], key_id=a["key_id"])
    try:
        auth.verify_signature(SIGNER.public_key, data, a["signature"], "prop")
        return True
    except Unauthorized as refused:
        assert refused.rule == "bad_signature"
        return False


@given(kwargs=kwargs_st, other=kwargs_st, data=st.data())
def test_any_change_to_a_signed_commands_kwargs_breaks_its_signature(kwargs, other, data):
    msg = dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                           kwargs=kwargs, options={})
    signed = SIGNER.sign(msg)
    assert verifies(msg, signed)
    assert dict(reversed(list(kwargs.items()))) == kwargs
    assert verifies(msg.copy(kwargs=dict(reversed(list(kwargs.items())))), signed)  # order is free
    how = data.draw(st.sampled_from(["value", "add", "drop", "replace"]))
    changed = dict(kwargs)
    name = data.draw(st.sampled_from(sorted(kwargs)))
    if how == "value":
        changed[name] = data.draw(json_leaf)
    elif how == "add":
        changed[name + "x"] = data.draw(json_leaf)
    elif how == "drop":
        del changed[name]
    else:
        changed = other
    if exact(changed) == exact(kwargs):
        return  # not a change
    assert not verifies(msg.copy(kwargs=changed), signed)


def test_the_queue_actor_and_signature_fields_are_signed_too():
    msg = dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                           kwargs={"request_id": "r"}, options={})
    a = SIGNER.sign(msg).options[auth.OPTION]
    base = dict(queue="ballast.wallets", actor="deposit", kwargs={"request_id": "r"},
                signed_at=a["signed_at"], producer="prop", key_id=a["key_id"])
    auth.verify_signature(SIGNER.public_key, canonical_bytes(**base), a["signature"], "prop")
    for field, value in [("queue", "ballast.markets"), ("actor", "withdraw"),
                         ("signed_at", a["signed_at"] + 1), ("producer", "prop2"), ("key_id", "k_x")]:
        with pytest.raises(Unauthorized):
            auth.verify_signature(SIGNER.public_key, canonical_bytes(**{**base, field: value}),
                                  a["signature"], "prop")


def test_key_material_round_trips_and_never_shows_in_repr():
    signer = auth.Signer.generate("app")
    again = auth.Signer.from_material(json.dumps(signer.material()))
    assert (again.producer, again.key_id, again.public_key) == (signer.producer, signer.key_id, signer.public_key)
    assert signer.material()["private_key"] not in repr(signer)
    pem_only = {**signer.material(), "private_key": ""}
    assert auth.Signer.from_material(json.dumps(pem_only)).public_key == signer.public_key
    with pytest.raises(Exception) as bad:
        auth.Signer.from_material(json.dumps({**signer.material(), "key_id": "k_other"}))
    assert signer.material()["private_key"] not in str(bad.value)


# --- the producers table ---------------------------------------------------------------------

def keys_of(engine, name):
    with engine.connect() as conn:
        return {k["key_id"]: k for p in auth.list_producers(conn) if p["name"] == name for k in p["keys"]}


def test_add_rotate_revoke_are_audited_and_the_database_holds_only_public_keys(engine):
    name = uid("app-")
    with engine.begin() as conn:
        first = auth.add_producer(conn, name, ["funding"], "ops-ada")
    with engine.begin() as conn:
        with pytest.raises(Refused):
            auth.add_producer(conn, name, ["funding"], "ops-ada")
    with engine.begin() as conn:
        second = auth.rotate_key(conn, name, 3600, "ops-ada")
    keys = keys_of(engine, name)
    assert set(keys) == {first.key_id, second.key_id}
    assert all(k["active"] for k in keys.values())  # both valid during the overlap
    assert keys[first.key_id]["valid_until"] is not None and keys[second.key_id]["valid_until"] is None
    with engine.begin() as conn:
        auth.revoke(conn, name, "ops-bob", first.key_id)
    assert not keys_of(engine, name)[first.key_id]["active"]
    with engine.begin() as conn:
        auth.revoke(conn, name, "ops-bob")
        with pytest.raises(Refused):
            auth.rotate_key(conn, name, 0, "ops-ada")
    with engine.connect() as conn:
        audit = [(a["action"], a["performed_by"]) for a in auth.audit_of(conn, name)]
        stored = conn.execute(text("SELECT string_agg(public_key, ',') FROM producer_keys "
                                   "WHERE producer = :p"), {"p": name}).scalar_one()
    assert audit == [("add", "ops-ada"), ("rotate", "ops-ada"), ("revoke_key", "ops-bob"),
                     ("revoke", "ops-bob")]
    for signer in (first, second):
        assert signer.material()["private_key"] not in stored
        assert signer.public_key in stored


# --- the CLI --------------------------------------------------------------------------------

def cli(*args: str):
    from infra.cli.main import cli as group

    return CliRunner().invoke(group, list(args))


def test_the_producers_commands_print_key_material_once_and_list_never(engine):
    name = uid("cli-")
    added = cli("producers", "add", name, "--role", "wagering", "--role", "funding",
                "--by", CLI_OPERATOR, "--json")
    assert added.exit_code == 0, added.output
    doc = json.loads(added.stdout)
    material = doc["key_material"]
    assert doc["roles"] == ["wagering", "funding"] and material["key_id"] == doc["key_id"]
    auth.Signer.from_material(json.dumps(material))  # usable as it is
    listed = cli("producers", "list", "--json")
    assert material["private_key"] not in listed.stdout and "private_key" not in listed.stdout
    (row,) = [p for p in json.loads(listed.stdout) if p["name"] == name]
    assert row["roles"] == ["wagering", "funding"] and [k["key_id"] for k in row["keys"]] == [doc["key_id"]]
    rotated = json.loads(cli("producers", "rotate", name, "--overlap", "30m", "--by", CLI_OPERATOR,
                             "--json").stdout)
    assert rotated["overlap_s"] == 1800 and rotated["key_id"] != doc["key_id"]
    revoked = json.loads(cli("producers", "revoke", name, "--key", doc["key_id"], "--by", CLI_OPERATOR,
                             "--json").stdout)
    assert revoked == {"name": name, "revoked_keys": [doc["key_id"]]}
    audit = json.loads(cli("producers", "audit", name, "--json").stdout)
    assert [a["action"] for a in audit] == ["add", "rotate", "revoke_key"]
    assert all(a["performed_by"] == CLI_OPERATOR for a in audit)


def test_a_producers_lever_by_someone_else_than_the_operators_key_is_refused(engine):
    name = uid("cli-")
    done = cli("producers", "add", name, "--role", "funding", "--by", "ops-somebody-else")
    assert done.exit_code == 2
    assert "identity_not_signer" in done.output and "ops-somebody-else" in done.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM producers WHERE name = :n"), {"n": name}).scalar_one() == 0


def test_the_roles_command_shows_the_policy_table():
    rows = json.loads(cli("producers", "roles", "--json").stdout)
    by_role = {r["role"]: r for r in rows}
    assert "deposit" in by_role["funding"]["actors"]
    assert "settle_market" in by_role["ballast"]["actors"]
    assert any("admin_created" in c for c in by_role["wagering"]["conditions"])


# --- signed webhooks -------------------------------------------------------------------------

def test_alert_webhooks_are_signed_and_the_readme_receiver_verifies_them(engine, monkeypatch):
    from infra import alerts
    from infra.settings import get_settings
    from infra.uow import UnitOfWork
    from tests.infra.webhook_server import WebhookServer

    scope: dict = {}
    exec(snippet("python", "**Alert webhooks are signed**"), scope)
    verified = scope["verified"]
    with WebhookServer() as hook:
        monkeypatch.setenv("BALLAST_ALERT_WEBHOOK_URL", hook.url)
        monkeypatch.setenv("BALLAST_ALERT_WEBHOOK_SECRET", "s3cret")
        get_settings.cache_clear()
        try:
            key = uid("k")
            with UnitOfWork() as uow:
                alert_id = alerts.raise_alert(uow, kind="test", severity="warning", subject="signed?",
                                              dedupe_key=key)
                uow.commit()
            alerts.deliver_pending(engine, sleep=lambda s: None)
        finally:
            monkeypatch.delenv("BALLAST_ALERT_WEBHOOK_URL")
            monkeypatch.delenv("BALLAST_ALERT_WEBHOOK_SECRET")
            get_settings.cache_clear()
        (got,) = [r for r in hook.received if r["body"]["alert"]["alert_id"] == alert_id]
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert re.fullmatch(r"v1=[0-9a-f]{64}", headers["x-ballast-signature"])
    assert verified("s3cret", headers["x-ballast-timestamp"], headers["x-ballast-signature"], got["raw"])
    assert not verified("other", headers["x-ballast-timestamp"], headers["x-ballast-signature"], got["raw"])
    assert not verified("s3cret", headers["x-ballast-timestamp"], headers["x-ballast-signature"],
                        got["raw"].replace(b"signed?", b"signed!"))
    assert "s3cret" not in json.dumps(got["body"])


def test_an_operator_lever_names_the_operator_whose_key_the_cli_holds(engine, monkeypatch):
    from infra.settings import get_settings
    from infra.uow import UnitOfWork
    from infra import alerts

    with UnitOfWork() as uow:
        alert_id = alerts.raise_alert(uow, kind="test", severity="warning", subject="lever",
                                      dedupe_key=uid("k"))
        uow.commit()
    refused = cli("alerts", "ack", str(alert_id), "--by", "ops-impostor")
    assert refused.exit_code == 2 and "identity_not_signer" in refused.output
    monkeypatch.delenv("BALLAST_OPERATOR_KEY_FILE")
    get_settings.cache_clear()
    try:
        keyless = cli("alerts", "ack", str(alert_id), "--by", CLI_OPERATOR)
        assert keyless.exit_code == 2 and "needs the operator's key" in keyless.output
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM alerts WHERE id = :i"), {"i": alert_id}).scalar_one() == "open"
    acked = cli("alerts", "ack", str(alert_id), "--by", CLI_OPERATOR, "--json")
    assert json.loads(acked.stdout)["acknowledged_by"] == CLI_OPERATOR


def test_the_middleware_fails_closed_when_it_cannot_verify(monkeypatch):
    """An error while verifying is a MiddlewareError (Dramatiq would swallow anything else
    and run the actor) and not a BallastError (so it is retried, not dead-lettered)."""
    import sqlalchemy.exc
    from dramatiq.middleware.middleware import MiddlewareError

    from domain.errors import BallastError
    from infra.middleware.auth import Authenticate

    def database_gone(conn, key_id):
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(auth, "lookup_key", database_gone)
    msg = SIGNER.sign(dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                                       kwargs={"request_id": "r"}, options={}))
    with pytest.raises(MiddlewareError) as raised:
        Authenticate().before_process_message(None, msg)
    assert not isinstance(raised.value, BallastError)


def test_the_middleware_refuses_before_anything_else_what_is_not_an_envelope():
    from dramatiq.middleware.middleware import MiddlewareError

    from domain.errors import InvalidCommand
    from infra.middleware.auth import Authenticate

    for msg in (dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(1,),
                                 kwargs={}, options={}),
                dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                                 kwargs=["x"], options={})):
        with pytest.raises(InvalidCommand) as raised:
            Authenticate().before_process_message(None, msg)
        assert isinstance(raised.value, MiddlewareError)


def test_refusals_counted_at_once_still_reach_the_burst_alert(engine):
    """Refusals of one producer recorded at the same moment, from several threads, each
    count the others: the burst's alert opens at exactly its threshold."""
    import threading

    from sqlalchemy import text as sql_text

    from infra.broker import get_broker
    from infra.middleware.auth import Authenticate

    mw = Authenticate()
    producer = f"burst-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(mw.burst_count)

    def refuse(n: int) -> None:
        start.wait()
        mw._record(get_broker(), producer, "deposit", "role_may_not_send", "refused", f"m{n}")

    threads = [threading.Thread(target=refuse, args=(n,)) for n in range(mw.burst_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with engine.connect() as conn:
        opened = conn.execute(sql_text(
            "SELECT count(*) FROM alerts WHERE dedupe_key = :k AND status = 'open'"),
            {"k": f"auth:burst:{producer}"}).scalar_one()
    assert opened == 1
