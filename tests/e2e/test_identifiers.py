"""Identifiers through a real worker: an id of another type is refused, never coerced."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from infra import rabbit
from tests.harness import send, uid, wait_until

pytestmark = pytest.mark.e2e


def test_a_user_id_of_12_5_is_dead_lettered_and_no_user_12_5_appears(env, engine, worker, events):
    rid = uid("r")
    send(env, "deposit", request_id=rid, user_id=12.5, currency="NGN", amount=1_000, reference="bank")
    letter = wait_until(lambda: [d.summary() for d in rabbit.list_dead_letters("ballast.wallets", 1000, env.broker_url)
                                 if d.summary()["request_id"] == rid], what="the dead letter")[0]
    assert letter["reason"].startswith("invalid payload: user_id:") and letter["retries"] == 0
    rejected = wait_until(lambda: [e for e in events.named("command.rejected")
                                   if e["data"]["request_id"] == rid], what="command.rejected")
    assert "user_id" in rejected[0]["data"]["reason"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts WHERE code LIKE 'user:12.5:%'")).scalar_one() == 0


def test_a_character_id_given_as_text_is_refused(env, engine, worker):
    rid = uid("r")
    send(env, "register_character", request_id=rid, character_id="42", name="Text Id", role="USER")
    letter = wait_until(lambda: [d.summary() for d in rabbit.list_dead_letters("ballast.journal", 1000, env.broker_url)
                                 if d.summary()["request_id"] == rid], what="the dead letter")[0]
    assert "character_id" in letter["reason"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM journal_characters WHERE name = 'Text Id'")).scalar_one() == 0
