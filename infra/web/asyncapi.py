"""The message contract as an AsyncAPI 3 document, generated from the pydantic schemas the
workers validate with (``infra.contract``).  ``docs/asyncapi.json`` is this document,
checked in; ``ballast web asyncapi --write`` regenerates it and a test fails when it is stale.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from infra.contract import ACTORS, EVENTS, EVENTS_EXCHANGE

REF = "#/components/schemas/{model}"


def _version() -> str:
    try:
        return version("ballast")
    except PackageNotFoundError:
        return "0.0.0"


def _envelope(actor: str, queue: str, schema_name: str) -> dict[str, Any]:
    """Dramatiq's JSON envelope with this actor's kwargs (CONTRACT.md, "Messages in")."""
    return {
        "type": "object",
        "required": ["queue_name", "actor_name", "args", "kwargs", "message_id"],
        "properties": {
            "queue_name": {"type": "string", "const": queue},
            "actor_name": {"type": "string", "const": actor},
            "args": {"type": "array", "maxItems": 0},
            "kwargs": {"$ref": REF.format(model=schema_name)},
            "options": {"type": "object"},
            "message_id": {"type": "string"},
            "message_timestamp": {"type": "integer", "description": "ms since the epoch"},
        },
    }


EVENT_ENVELOPE = {
    "type": "object",
    "required": ["event", "event_id", "occurred_at", "data"],
    "properties": {
        "event": {"type": "string"},
        "event_id": {"type": "string"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "recipient": {"type": ["string", "null"], "description": "a user id, admin, or null"},
        "data": {"type": "object"},
    },
}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every actor (commands and steps) and every event."""
    specs = sorted(ACTORS.values(), key=lambda s: (s.queue, s.actor))
    models = sorted({s.schema for s in specs}, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in specs:
        ch = channels.setdefault(spec.queue, {
            "address": spec.queue,
            "description": f"RabbitMQ queue {spec.queue} (default exchange, routing key = "
                           f"queue name); {spec.queue}.DQ delayed, {spec.queue}.XQ dead letters.",
            "messages": {},
            "bindings": {"amqp": {"is": "queue", "queue": {"name": spec.queue, "durable": True},
                                  "bindingVersion": "0.3.0"}},
        })
        ch["messages"][spec.actor] = {"$ref": f"#/components/messages/{spec.actor}"}
        envelope = f"{spec.actor}.message"
        schemas[envelope] = _envelope(spec.actor, spec.queue, spec.schema.__name__)
        messages[spec.actor] = {
            "name": spec.actor,
            "title": spec.actor.replace("_", " "),
            "summary": (spec.schema.__doc__ or "").strip().splitlines()[0] if spec.schema.__doc__
            else ("internal step" if spec.step else f"command {spec.actor}"),
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=envelope)},
            "tags": [{"name": "step" if spec.step else "command"}],
        }
        operations[spec.actor] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{spec.queue}"},
            "messages": [{"$ref": f"#/channels/{spec.queue}/messages/{spec.actor}"}],
            "summary": ("Internal step (kwargs not public)" if spec.step
                        else "Command; request_id is the idempotency key"),
        }
    schemas["Event"] = EVENT_ENVELOPE
    for event in EVENTS:
        key = "event." + event
        channels[key] = {
            "address": event,
            "description": f"Topic exchange {EVENTS_EXCHANGE}, routing key {event}.",
            "messages": {"event": {"$ref": f"#/components/messages/{key}"}},
            "bindings": {"amqp": {"is": "routingKey",
                                  "exchange": {"name": EVENTS_EXCHANGE, "type": "topic",
                                               "durable": True},
                                  "bindingVersion": "0.3.0"}},
        }
        messages[key] = {"name": event, "contentType": "application/json",
                         "payload": {"$ref": REF.format(model="Event")}}
        operations["publish." + event] = {
            "action": "send", "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/event"}]}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Ballast", "version": _version(),
                 "description": "The treasury back office's message contract (docs/CONTRACT.md): "
                                "commands in as Dramatiq messages on RabbitMQ, events out on "
                                f"the {EVENTS_EXCHANGE} topic exchange."},
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": "127.0.0.1:5672", "protocol": "amqp",
                                 "description": "BALLAST_BROKER_URL"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }


def as_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def as_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
