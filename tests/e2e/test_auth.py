"""Who may send what, through real RabbitMQ, PostgreSQL and a worker process: every refusal
changes nothing and lands in the dead letters with the rule that refused it; rotation loses
no command; a revoked key is refused at once; a replayed dead letter still verifies."""

from __future__ import annotations

import json
import subprocess
import sys

import dramatiq
import pytest
from sqlalchemy import text

from infra import auth, rabbit
from infra.contract import spec_for
from tests.harness import CLI_OPERATOR, ROOT, EventTap, Worker, keyring, publish_raw, purge_all, uid, wait_quiet, wait_until

pytestmark = pytest.mark.e2e

WINDOW_MS = 86_400 * 1000  # BALLAST_AUTH_WINDOW_S's default


@pytest.fixture(scope="module")
def auth_worker(env):
    purge_all(env)
    w = Worker(env, processes=1, threads=2).start()
    yield w
    w.stop()
    purge_all(env)


@pytest.fixture
def tap(env):
    t = EventTap(env, "command.rejected")
    yield t
    t.close()


def message(actor: str, **kwargs) -> dramatiq.Message:
    return dramatiq.Message(queue_name=spec_for(actor).queue, actor_name=actor, args=(),
                            kwargs=kwargs, options={})


def publish(env, msg: dramatiq.Message | dict) -> str:
    body = msg.asdict() if isinstance(msg, dramatiq.Message) else msg
    publish_raw(env, body["queue_name"], json.dumps(body).encode(), sign=False)
    return body["message_id"]


def deposit(user: str, amount: int = 1_000, rid: str | None = None) -> dramatiq.Message:
    return message("deposit", request_id=rid or uid("r"), user_id=user, currency="NGN",
                   amount=amount, reference="auth test")


def balance(engine, user: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT balance FROM accounts WHERE code = :c"),
                            {"c": f"user:{user}:NGN"}).scalar_one_or_none()


def claimed(engine, rid: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM processed_requests WHERE request_id = :r"),
                            {"r": rid}).scalar_one() > 0


def letter(env, message_id: str) -> rabbit.DeadLetter | None:
    found = [d for d in rabbit.list_dead_letters(None, 1000, env.broker_url) if d.message_id == message_id]
    return found[0] if found else None


def producer(env, roles=("funding",)) -> auth.Signer:
    return keyring(env).producer(uid("p-"), roles)


def assert_refused(env, engine, tap, msg_id: str, rid: str, rule: str, secrets=()) -> rabbit.DeadLetter:
    """Dead-lettered with the rule, no retry, nothing claimed, command.rejected published,
    and no key material anywhere in the dead letter."""
    dl = wait_until(lambda: letter(env, msg_id), what=f"dead letter refused by {rule}")
    summary = dl.summary()
    assert summary["reason"].startswith(f"unauthorized by rule {rule}:"), summary["reason"]
    assert summary["retries"] == 0 and dl.info["code"] == "unauthorized"
    assert not claimed(engine, rid)
    rejected = wait_until(lambda: [e for e in tap.named("command.rejected")
                                   if e["data"]["message_id"] == msg_id], what="command.rejected")
    assert rejected[0]["data"]["code"] == "unauthorized" and rule in rejected[0]["data"]["reason"]
    whole = json.dumps(dl.body) + json.dumps(dl.info)
    for secret in secrets:
        assert secret not in whole
    return dl


# --- each refusal ------------------------------------------------------------------------

def test_an_unsigned_command_is_refused_and_changes_nothing(env, engine, auth_worker, tap):
    user = uid()
    msg = deposit(user)
    assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "unsigned")
    assert balance(engine, user) is None


def test_a_signature_by_another_key_is_refused_as_bad(env, engine, auth_worker, tap):
    signer, impostor = producer(env), auth.Signer.generate("x")
    user = uid()
    msg = signer.sign(deposit(user))
    forged = impostor.auth(msg.queue_name, msg.actor_name, msg.kwargs)
    body = msg.asdict()
    body["options"]["ballast_auth"]["signature"] = forged["signature"]
    assert_refused(env, engine, tap, publish(env, body), msg.kwargs["request_id"], "bad_signature",
                   secrets=[signer.material()["private_key"], impostor.material()["private_key"]])
    assert balance(engine, user) is None


def test_an_unknown_key_is_refused(env, engine, auth_worker, tap):
    stranger = auth.Signer.generate("test-funding")  # a real name, a key nobody registered
    msg = stranger.sign(deposit(uid()))
    assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "unknown_key")


def test_a_revoked_key_is_refused(env, engine, auth_worker, tap):
    signer = producer(env)
    with engine.begin() as conn:
        auth.revoke(conn, signer.producer, "tests", signer.key_id)
    msg = signer.sign(deposit(uid()))
    assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "revoked_key")


def test_a_signature_older_than_the_window_is_refused(env, engine, auth_worker, tap):
    signer = producer(env)
    with engine.begin() as conn:  # the key itself was valid back then
        conn.execute(text("UPDATE producer_keys SET valid_from = now() - interval '3 days' "
                          "WHERE key_id = :k"), {"k": signer.key_id})
    msg = signer.sign(deposit(uid()), signed_at=auth.now_ms() - WINDOW_MS - 60_000)
    assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "too_old")


def test_a_signature_from_the_future_beyond_the_skew_is_refused(env, engine, auth_worker, tap):
    signer = producer(env)
    msg = signer.sign(deposit(uid()), signed_at=auth.now_ms() + 10 * 60_000)
    assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "signed_in_future")


def test_tampered_kwargs_break_the_signature(env, engine, auth_worker, tap):
    signer = producer(env)
    user = uid()
    body = signer.sign(deposit(user, 1_000)).asdict()
    body["kwargs"]["amount"] = 1_000_000
    assert_refused(env, engine, tap, publish(env, body), body["kwargs"]["request_id"], "bad_signature")
    assert balance(engine, user) is None


def test_a_role_may_not_send_what_the_policy_does_not_give_it(env, engine, auth_worker, tap):
    wagering = producer(env, ("wagering",))
    user = uid()
    msg = wagering.sign(deposit(user))
    dl = assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "role_may_not_send")
    assert "needs funding" in dl.summary()["reason"]
    assert balance(engine, user) is None


def test_an_internal_step_accepts_only_ballasts_own_signature(env, engine, auth_worker, tap):
    operator = producer(env, ("operator", "wagering", "funding", "journal"))
    msg = operator.sign(message("settle_market", request_id=uid("r"), market_id=uid("m"),
                                distribution_id=1))
    dl = assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "role_may_not_send")
    assert "needs ballast" in dl.summary()["reason"]


def test_an_identity_that_is_not_the_signer_is_refused(env, engine, auth_worker, tap):
    operator = producer(env, ("operator",))
    msg = operator.sign(message("fund_treasury", request_id=uid("r"), currency="NGN", amount=5_000,
                                reference="not mine", performed_by="the-cfo"))
    with engine.connect() as conn:
        before = conn.execute(text("SELECT coalesce(sum(balance), 0) FROM accounts "
                                   "WHERE code = 'treasury:NGN'")).scalar_one()
    dl = assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "identity_not_signer")
    assert "performed_by 'the-cfo'" in dl.summary()["reason"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT coalesce(sum(balance), 0) FROM accounts "
                                 "WHERE code = 'treasury:NGN'")).scalar_one() == before


def test_an_admin_challenge_needs_an_operator(env, engine, auth_worker, tap):
    wagering = producer(env, ("wagering",))
    cid = uid("c")
    msg = wagering.sign(message("open_challenge", request_id=uid("r"), challenge_id=cid, title="t",
                                currency="NGN", stake=100, admin_created=True))
    assert_refused(env, engine, tap, publish(env, msg), msg.kwargs["request_id"], "role_may_not_send")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM challenges WHERE id = :c"),
                            {"c": cid}).scalar_one() == 0


def test_a_burst_of_refusals_from_one_producer_raises_a_security_alert(env, engine, auth_worker, tap):
    wagering = producer(env, ("wagering",))
    ids = [publish(env, wagering.sign(deposit(uid()))) for _ in range(5)]  # BALLAST_AUTH_BURST_COUNT
    wait_until(lambda: all(letter(env, i) for i in ids), what="five refusals")
    with engine.connect() as conn:
        alert = conn.execute(text("SELECT kind, severity, data FROM alerts WHERE dedupe_key = :k "
                                  "AND status = 'open'"), {"k": f"auth:burst:{wagering.producer}"}).one()
    assert (alert.kind, alert.severity) == ("auth_refusal_burst", "critical")
    assert alert.data["refusals"] >= 5 and alert.data["last_rule"] == "role_may_not_send"


# --- keys over time ----------------------------------------------------------------------

def test_a_key_rotation_loses_no_command(env, engine, auth_worker):
    old = producer(env)
    user = uid()
    for _ in range(3):
        publish(env, old.sign(deposit(user, 100)))
    with engine.begin() as conn:
        new = auth.rotate_key(conn, old.producer, 3600, "tests")
    for _ in range(3):  # during the overlap both keys sign
        publish(env, new.sign(deposit(user, 100)))
        publish(env, old.sign(deposit(user, 100)))
    wait_until(lambda: balance(engine, user) == 900, what="all nine deposits")
    wait_quiet(env)
    assert balance(engine, user) == 900
    # The overlap ends: the old key no longer signs, the new one does.
    with engine.begin() as conn:
        conn.execute(text("UPDATE producer_keys SET valid_until = now() WHERE key_id = :k"),
                     {"k": old.key_id})
    late = old.sign(deposit(user, 100))
    publish(env, late)
    publish(env, new.sign(deposit(user, 100)))
    dl = wait_until(lambda: letter(env, late.message_id), what="the old key refused")
    assert dl.summary()["reason"].startswith("unauthorized by rule key_not_valid:")
    wait_until(lambda: balance(engine, user) == 1_000, what="the new key's deposit")


def test_a_revoked_key_is_refused_mid_stream(env, engine, auth_worker):
    signer = producer(env)
    user = uid()
    for _ in range(3):
        publish(env, signer.sign(deposit(user, 10)))
    wait_until(lambda: balance(engine, user) == 30, what="the first three")
    with engine.begin() as conn:
        auth.revoke(conn, signer.producer, "tests", signer.key_id)
    after = [signer.sign(deposit(user, 10)) for _ in range(3)]
    for msg in after:
        publish(env, msg)
    letters = wait_until(lambda: [letter(env, m.message_id) for m in after]
                         if all(letter(env, m.message_id) for m in after) else None)
    assert {d.summary()["reason"].split(":")[0] for d in letters} == {"unauthorized by rule revoked_key"}
    assert balance(engine, user) == 30


def test_a_replayed_dead_letter_still_verifies_and_takes_effect(env, engine, auth_worker):
    funding = producer(env)
    user = uid()
    # bronze's credit line is 10,000.00: a withdrawal of 20,000.00 from an empty wallet is refused.
    big = funding.sign(message("withdraw", request_id=uid("r"), user_id=user, currency="NGN",
                               amount=2_000_000, reference="rent"))
    publish(env, big)
    dl = wait_until(lambda: letter(env, big.message_id), what="the refused withdrawal")
    assert "refused by min_balance" in dl.summary()["reason"], dl.summary()["reason"]
    assert dl.body["options"]["ballast_auth"] == big.options["ballast_auth"]  # kept as signed
    publish(env, funding.sign(deposit(user, 2_500_000)))
    wait_until(lambda: balance(engine, user) == 2_500_000)
    assert rabbit.replay(None, {big.message_id}, env.broker_url) == 1
    wait_until(lambda: balance(engine, user) == 500_000, what="the replayed withdrawal")
    assert letter(env, big.message_id) is None


def test_a_retried_message_keeps_verifying(env, engine, clean_queues):
    """Dramatiq's retry re-enqueues the same signed message: it verifies on each attempt."""
    import redis

    from tests.e2e.flaky_actors import QUEUE

    w = Worker(env, modules=["tests.e2e.flaky_actors"], queues=[QUEUE]).start()
    try:
        key = uid("k")
        msg = dramatiq.Message(queue_name=QUEUE, actor_name="transient_once", args=(),
                               kwargs={"key": key}, options={})
        publish(env, keyring(env).sign(msg))
        client = redis.Redis.from_url(env.redis_url)
        wait_until(lambda: client.llen(key) == 2, what="the retry ran")
        wait_quiet(env, outbox=False)
        assert letter(env, msg.message_id) is None
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM auth_log WHERE message_id = :m"),
                                {"m": msg.message_id}).scalar_one() == 0
    finally:
        w.stop()


# --- rollout modes -----------------------------------------------------------------------

def test_warn_mode_processes_an_unsigned_command_but_logs_counts_and_alerts_it(env, engine, auth_worker):
    w = auth_worker.restart(BALLAST_AUTH="warn")  # the only worker consuming, in warn mode
    try:
        user = uid()
        unsigned = deposit(user, 700)
        publish(env, unsigned)
        wait_until(lambda: balance(engine, user) == 700, what="the unsigned deposit, processed")
        forged = producer(env).sign(deposit(user, 5)).asdict()
        forged["kwargs"]["amount"] = 5_000
        publish(env, forged)  # a bad signature is refused even in warn mode
        dl = wait_until(lambda: letter(env, forged["message_id"]), what="the tampered one refused")
        assert dl.summary()["reason"].startswith("unauthorized by rule bad_signature:")
        assert balance(engine, user) == 700
        with engine.connect() as conn:
            logged = conn.execute(text("SELECT outcome, rule FROM auth_log WHERE message_id = :m"),
                                  {"m": unsigned.message_id}).one()
            alert = conn.execute(text("SELECT kind FROM alerts WHERE dedupe_key = 'auth:unsigned:deposit' "
                                      "AND status = 'open'")).scalar_one()
        assert tuple(logged) == ("warned", "unsigned") and alert == "auth_unsigned"
        assert "auth.warn_only" in w.log()
    finally:
        auth_worker.restart(BALLAST_AUTH="require")


def test_off_mode_says_so_loudly_at_start(env, clean_queues):
    w = Worker(env, BALLAST_AUTH="off").start()
    try:
        wait_until(lambda: "auth.OFF" in w.log(), what="the loud line")
        assert "NOT verified" in w.log()
    finally:
        w.stop()


def test_a_dead_letter_older_than_the_window_replays_only_with_an_operators_countersignature(
        env, engine, auth_worker):
    funding = producer(env)
    with engine.begin() as conn:
        conn.execute(text("UPDATE producer_keys SET valid_from = now() - interval '3 days' "
                          "WHERE key_id = :k"), {"k": funding.key_id})
    user = uid()
    old = funding.sign(deposit(user, 4_200), signed_at=auth.now_ms() - WINDOW_MS - 60_000)
    publish(env, old)
    wait_until(lambda: letter(env, old.message_id), what="the old command refused")
    assert rabbit.replay(None, {old.message_id}, env.broker_url) == 1  # as it is: too old still
    wait_until(lambda: (d := letter(env, old.message_id)) and d.body["options"].get("replays") == 1,
               what="refused again")
    assert balance(engine, user) is None
    impostor = producer(env, ("funding",))  # a countersignature by a non-operator does nothing
    assert rabbit.replay(None, {old.message_id}, env.broker_url, countersign=impostor.countersign) == 1
    again = wait_until(lambda: (d := letter(env, old.message_id)) and d.body["options"].get("replays") == 2
                       and d, what="refused a third time")
    assert again.summary()["reason"].startswith("unauthorized by rule too_old:")
    # `ballast dlq replay` countersigns with the operator's key the CLI holds.
    done = subprocess.run([sys.executable, "-m", "infra.cli.main", "dlq", "replay", "--id",
                           old.message_id, "--by", CLI_OPERATOR, "--json"], cwd=ROOT,
                          env=env.environ(), capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["replayed"] == 1, done.stderr
    wait_until(lambda: balance(engine, user) == 4_200, what="the vouched replay")
    assert letter(env, old.message_id) is None
