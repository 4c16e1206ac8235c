"""The console over Flask's test client, on the run's real PostgreSQL and RabbitMQ:
login, sessions, CSRF, roles, field errors, every page, the AsyncAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from infra.contract import ACTORS, parse
from domain.errors import InvalidCommand
from tests import harness
from tests.web.conftest import PASSWORD, csrf_of, login

ROOT = Path(__file__).resolve().parents[2]
BASE = "https://localhost"


def audit_rows(engine, name):
    with engine.connect() as conn:
        return conn.execute(text("SELECT action, outcome, detail FROM console_audit "
                                 "WHERE operator = :n ORDER BY id"), {"n": name}).all()


def queued(env, queue):
    """Messages waiting on ``queue`` (0 when nothing ever declared it)."""
    import pika

    conn = harness.amqp(env)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def test_a_wrong_password_is_refused_and_both_attempts_are_audited(app, engine, make_operator):
    name = make_operator("viewer")
    client = app.test_client()
    bad = login(client, name, "not the password at all")
    assert bad.status_code == 401 and "wrong name or password" in bad.get_data(as_text=True)
    assert client.get(BASE + "/").status_code == 302  # still logged out
    good = login(client, name)
    assert good.status_code == 302
    assert client.get(BASE + "/").status_code == 200
    assert [(a, o) for a, o, _ in audit_rows(engine, name)] == [("login", "refused"), ("login", "ok")]


def test_the_session_cookie_is_signed_httponly_secure_and_samesite(app, make_operator):
    client = app.test_client()
    resp = login(client, make_operator("viewer"))
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    forged = app.test_client()
    forged.set_cookie("ballast_console", value[:-3] + ("abc" if not value.endswith("abc") else "xyz"),
                      domain="localhost", secure=True)
    assert forged.get(BASE + "/").status_code == 302  # a tampered signature is no session


def test_the_password_is_stored_as_argon2id(engine, make_operator):
    name = make_operator("viewer")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM console_operators WHERE name = :n"),
                              {"n": name}).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_a_post_without_the_csrf_token_is_refused_and_nothing_is_sent(app, env, engine, make_operator,
                                                                         clean_queues):
    name = make_operator("admin")
    client = app.test_client()
    login(client, name)
    resp = client.post(BASE + "/treasury/cycle", data={})
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    assert queued(env, "ballast.treasury") == 0
    assert ("csrf", "refused") in [(a, o) for a, o, _ in audit_rows(engine, name)]


def test_a_token_from_another_session_is_refused(app, env, make_operator, clean_queues):
    """A cross-site form carries the attacker's own token, never the victim's."""
    attacker = app.test_client()
    login(attacker, make_operator("viewer"))
    token = csrf_of(attacker.get(BASE + "/treasury").get_data(as_text=True))
    victim = app.test_client()
    login(victim, make_operator("admin"))
    resp = victim.post(BASE + "/treasury/cycle", data={"csrf_token": token})
    assert resp.status_code == 400
    assert queued(env, "ballast.treasury") == 0


def test_a_viewer_sees_no_action_and_may_not_take_one(app, env, make_operator, clean_queues):
    client = app.test_client()
    login(client, make_operator("viewer"))
    page = client.get(BASE + "/treasury").get_data(as_text=True)
    assert "run-cycle" not in page
    resp = client.post(BASE + "/treasury/cycle", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 403
    assert queued(env, "ballast.treasury") == 0


def test_an_operator_action_is_a_command_sent_in_the_operators_name(app, env, engine,
                                                                           make_operator, clean_queues):
    name = make_operator("operator")
    client = app.test_client()
    login(client, name)
    page = client.get(BASE + "/treasury").get_data(as_text=True)
    resp = client.post(BASE + "/treasury/cycle", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 302 and "sent=run_settlement_cycle:web-" in resp.headers["Location"]
    conn = harness.amqp(env)
    try:
        _, _, body = conn.channel().basic_get("ballast.treasury", auto_ack=True)
    finally:
        conn.close()
    msg = json.loads(body)
    assert msg["actor_name"] == "run_settlement_cycle" and msg["kwargs"]["trigger"] == "manual"
    assert msg["kwargs"]["requested_by"] == name
    assert msg["options"]["ballast_auth"]["producer"] == name  # signed by the operator who acted
    assert [(a, o) for a, o, _ in audit_rows(engine, name)][-1] == ("run_settlement_cycle", "ok")


def test_bad_input_gets_the_clis_one_line_reason_beside_its_field(app, env, make_operator, clean_queues):
    name = make_operator("operator")
    client = app.test_client()
    login(client, name)
    page = client.get(BASE + "/matching").get_data(as_text=True)
    resp = client.post(BASE + "/matching/link", data={"csrf_token": csrf_of(page),
                                                     "participation_id": "p1", "journal_id": "bad:id"})
    with pytest.raises(InvalidCommand) as cli_reason:  # what `ballast send` prints
        parse(ACTORS["link_payment"].schema, {"request_id": "r", "participation_id": "p1",
                                               "journal_id": "bad:id", "admin_id": name})
    assert str(cli_reason.value).startswith("invalid payload: journal_id: ")
    assert resp.status_code == 422
    expected = str(cli_reason.value).replace("'", "&#39;")
    assert f'data-error-for="journal_id" role="alert">{expected}</span>' in resp.get_data(as_text=True)
    assert queued(env, "ballast.journal") == 0


PAGES = ["/", "/dlq", "/challenges", "/markets", "/treasury", "/wallets?user=nobody", "/alerts",
         "/alerts?all=1", "/analytics", "/matching", "/contract", "/audit",
         "/contract/asyncapi.json", "/contract/asyncapi.yaml"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_for_an_admin(app, make_operator, path):
    client = app.test_client()
    login(client, make_operator("admin"))
    resp = client.get(BASE + path)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:2000]
    assert "Content-Security-Policy" in resp.headers


def test_only_an_admin_reads_the_audit(app, make_operator):
    client = app.test_client()
    login(client, make_operator("operator"))
    assert client.get(BASE + "/audit").status_code == 403


def test_the_checked_in_asyncapi_document_is_current():
    from infra.web.asyncapi import as_json, document

    checked_in = (ROOT / "docs" / "asyncapi.json").read_text()
    assert checked_in == as_json(document()), (
        "docs/asyncapi.json is out of date: run `ballast web asyncapi --write docs/asyncapi.json`")


def test_the_asyncapi_document_has_every_actor_with_its_schema():
    from infra.web.asyncapi import document

    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    for actor, spec in ACTORS.items():
        assert doc["operations"][actor]["channel"] == {"$ref": f"#/channels/{spec.queue}"}
        kwargs = doc["components"]["schemas"][f"{actor}.message"]["properties"]["kwargs"]
        target = doc["components"]["schemas"][kwargs["$ref"].split("/")[-1]]
        assert set(target["properties"]) == set(spec.schema.model_fields)


def test_the_overview_shows_the_ledger_check_and_buffers_of_the_cli(engine, make_operator):
    from infra import ledger
    from infra.treasury import views
    from infra.web.app import create_app
    from infra.web.settings import WebSettings

    fresh = create_app(engine, WebSettings(secret_key="fresh-" + "k" * 32))  # no cached check
    client = fresh.test_client()
    login(client, make_operator("viewer"))
    html = client.get(BASE + "/").get_data(as_text=True)
    with engine.connect() as conn:
        check = ledger.check(conn)
        buffers = views.buffers(conn)
    assert f"{check['transactions']} transactions, {check['entries']} entries" in html
    for b in buffers:
        assert f"{b['balance']:,} {b['currency']}" in html


def test_send_command_refuses_bad_input_before_publishing(env, clean_queues):
    from infra.commands import send_command

    with pytest.raises(InvalidCommand, match="match_count"):
        send_command("fill_treasury", {"challenge_id": "c1", "side": "YES", "match_count": 0,
                                       "admin_id": "ada"}, sender="ada")
    with pytest.raises(InvalidCommand, match="unknown actor"):
        send_command("no_such_actor", {})
    assert queued(env, "ballast.challenges") == 0


def test_purge_selected_says_how_many_and_deletes_only_those(app, env, engine, make_operator,
                                                             clean_queues):
    import dramatiq

    from infra import deadletter_log, rabbit

    ids = []
    for n in range(3):
        msg = dramatiq.Message(queue_name="ballast.wallets", actor_name="deposit", args=(),
                               kwargs={"request_id": f"dead-{n}"},
                               options={"dead_letter": {"reason": f"test reason {n}"}})
        harness.publish_raw(env, "ballast.wallets.XQ", json.dumps(msg.asdict()).encode())
        with engine.begin() as conn:  # as the dead-letter middleware records each one
            deadletter_log.record_in(conn, msg.asdict(), msg.options["dead_letter"])
        ids.append(msg.message_id)
    operator = app.test_client()
    login(operator, make_operator("operator"))
    listing = operator.get(BASE + "/dlq?queue=ballast.wallets").get_data(as_text=True)
    assert "test reason 0" in listing and "purge-selected" not in listing  # admins only
    client = app.test_client()
    login(client, make_operator("admin"))
    page = client.get(BASE + "/dlq?queue=ballast.wallets").get_data(as_text=True)
    form = {"csrf_token": csrf_of(page), "queue": "ballast.wallets", "id": ids[:2]}
    confirm = client.post(BASE + "/dlq/purge", data=form).get_data(as_text=True)
    assert "Delete 2 selected dead letter(s) for good." in confirm
    assert len(rabbit.list_dead_letters("ballast.wallets", 10)) == 3  # nothing yet
    done = client.post(BASE + "/dlq/purge", data={**form, "confirm": "1"})
    assert done.status_code == 302 and "purged+2" in done.headers["Location"]
    left = [d.message_id for d in rabbit.list_dead_letters("ballast.wallets", 10)]
    assert left == [ids[2]]
    with engine.connect() as conn:  # the durable log says who purged them
        rows = dict(conn.execute(text("SELECT message_id, status FROM dead_letters "
                                      "WHERE message_id = ANY(:ids)"), {"ids": ids}).all())
    assert rows == {ids[0]: "purged", ids[1]: "purged", ids[2]: "dead"}
    after = client.get(BASE + "/dlq?queue=ballast.wallets").get_data(as_text=True)
    assert "test reason 2" in after and "test reason 0" not in after


def test_repeated_failed_logins_lock_the_name_out_even_with_the_right_password(app, make_operator):
    from infra.web.operators import MAX_FAILED_LOGINS

    name = make_operator("admin")
    client = app.test_client()
    for _ in range(MAX_FAILED_LOGINS):
        assert login(client, name, "guess guess guess").status_code == 401
    locked = login(client, name)
    assert locked.status_code == 401 and "too many failed logins" in locked.get_data(as_text=True)
    assert client.get(BASE + "/").status_code == 302
    assert login(app.test_client(), make_operator("admin")).status_code == 302  # others unaffected


def test_users_add_with_a_generated_password_that_logs_in(app, engine):
    from click.testing import CliRunner

    from infra.cli.main import cli
    from tests.harness import uid

    name = uid("cli-op-")
    out = CliRunner().invoke(cli, ["web", "users", "add", name, "--role", "operator",
                                   "--generate", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert (doc["name"], doc["role"]) == (name, "operator") and len(doc["password"]) >= 12
    assert login(app.test_client(), name, doc["password"]).status_code == 302
    again = CliRunner().invoke(cli, ["web", "users", "add", name, "--role", "admin",
                                     "--password-stdin"], input="another long password\n")
    assert again.exit_code == 2 and f"operator {name} already exists" in again.output
    short = CliRunner().invoke(cli, ["web", "users", "add", uid("x"), "--role", "admin",
                                     "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.output


def test_buffer_history_ends_at_the_ledger_balance_and_steps_by_each_flow(engine):
    from actors import treasury as acts
    from infra import ledger
    from infra.web.queries import balance_history

    code = "buffer:system_buffer_fiat"
    flows = [700_000, -250_000, 90_000]
    for amount in flows:
        acts.record_buffer_flow.fn(request_id=harness.uid("r"), account_type="system_buffer_fiat",
                                   amount=amount, reference="test")
    with engine.connect() as conn:
        points = balance_history(conn, code, points=len(flows))
        now = ledger.balance(conn, code).balance
    balances = [p["balance"] for p in points]
    assert balances[-1] == now
    assert [b - a for a, b in zip(balances, balances[1:])] == flows[1:]


def test_configuring_a_budget_confirms_the_budget_after_then_sends(app, env, engine, make_operator,
                                                                   clean_queues):
    cid = harness.uid("c")
    with engine.begin() as conn:  # an admin challenge with 300,000 of 900,000 already at risk
        conn.execute(text("INSERT INTO challenges (id, title, currency, stake, admin_created) "
                          "VALUES (:c, 'Budget', 'NGN', 150000, true)"), {"c": cid})
        conn.execute(text("INSERT INTO challenge_treasury (challenge_id, max_risk, allocated, "
                          "reserved, configured_by) VALUES (:c, 900000, 150000, 150000, 'ops')"),
                     {"c": cid})
    name = make_operator("admin")
    client = app.test_client()
    login(client, name)
    page = client.get(BASE + f"/challenges/{cid}").get_data(as_text=True)
    form = {"csrf_token": csrf_of(page), "max_risk": "1200000", "notes": "derby day"}
    confirm = client.post(BASE + f"/challenges/{cid}/configure", data=form).get_data(as_text=True)
    assert "Max risk: ₦9,000.00 now, ₦12,000.00 after." in confirm
    assert "Stake at risk already (allocated and reserved): ₦3,000.00." in confirm
    assert "Budget after: ₦9,000.00 available (6 more match(es) of ₦1,500.00)." in confirm
    assert queued(env, "ballast.challenges") == 0  # nothing sent before the confirmation
    low = client.post(BASE + f"/challenges/{cid}/configure",
                      data={**form, "max_risk": "200000"}).get_data(as_text=True)
    assert "below the ₦3,000.00 already at risk" in low
    done = client.post(BASE + f"/challenges/{cid}/configure", data={**form, "confirm": "1"})
    assert done.status_code == 302 and "sent=configure_treasury:web-" in done.headers["Location"]
    assert queued(env, "ballast.challenges") == 1
    assert [(a, o) for a, o, _ in audit_rows(engine, name)][-1] == ("configure_treasury", "ok")
