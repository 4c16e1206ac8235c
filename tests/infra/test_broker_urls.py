"""BALLAST_BROKER_URL with several nodes: split, one vhost, and a connection that skips a
node that does not answer (the real broker is the second URL)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra import rabbit
from infra.settings import Settings, broker_urls, vhost_of, with_vhost


def test_a_list_of_urls_is_split_on_commas_or_semicolons():
    assert broker_urls("amqp://a:1/v, amqp://b:2/v;amqp://c:3/v") == [
        "amqp://a:1/v", "amqp://b:2/v", "amqp://c:3/v"]
    assert broker_urls("amqp://a/%2F") == ["amqp://a/%2F"]
    assert vhost_of("amqp://a/x%2Fy,amqp://b/x%2Fy") == "x/y"
    assert vhost_of("amqp://a") == "/"
    assert with_vhost("amqp://u:p@a:1/old,amqp://u:p@b:2/old", "new v") == (
        "amqp://u:p@a:1/new%20v,amqp://u:p@b:2/new%20v")


def test_urls_naming_two_vhosts_are_refused():
    with pytest.raises(ValidationError, match="same vhost"):
        Settings(broker_url="amqp://a/one,amqp://b/two")
    assert Settings(broker_url="amqp://a/one,amqp://b/one").broker_urls == [
        "amqp://a/one", "amqp://b/one"]


def test_a_connection_skips_a_node_that_does_not_answer(env):
    dead = with_vhost("amqp://guest:guest@127.0.0.1:1/", "x").rsplit("/", 1)[0]
    path = env.broker_url.rsplit("/", 1)[1]
    url = f"{dead}/{path},{env.broker_url}"
    params = rabbit.parameters(url)
    assert [p.port for p in params][0] == 1 and len(params) == 2
    with rabbit.connection(url) as conn:
        assert conn.is_open
    stats = rabbit.queue_stats(url)
    assert {r["queue"] for r in stats} >= {"ballast.wallets"}
