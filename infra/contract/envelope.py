"""The envelope of every message, checked before Dramatiq acts on it (CONTRACT.md).

A command is Dramatiq's JSON envelope.  Dramatiq itself trusts it: a list as
``options``, a list as ``actor_name`` or a ``queue_name`` nobody consumes kill a
worker thread or crash-loop a consumer.  ``check`` looks at the raw body once,
on arrival, and says in one line what is wrong with it, or returns the fields
Dramatiq may build its ``Message`` from.  Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

#: The largest body accepted; the biggest legitimate command (an import of 5,000 journal
#: entries) is about 1.5 MB.
MAX_BODY_BYTES = 4 * 1024 * 1024  # bytes
MAX_NAME_CHARS = 255  # queue and actor names (AMQP's limit for a queue name)
MAX_MESSAGE_ID_CHARS = 128
MAX_DEPTH = 32  # nesting of JSON arrays and objects
#: What a dead letter keeps of a body it could not keep whole.
RAW_KEPT_CHARS = 16 * 1024

FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id",
          "message_timestamp")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nonneg_int(v: Any) -> bool:
    return _int(v) and v >= 0


def _number(v: Any) -> bool:
    return (_int(v) or isinstance(v, float)) and not isinstance(v, bool)


#: Options Ballast and Dramatiq's middleware read, with the type each must have.  Any other
#: option is refused: ``throws``, ``pipe_target``, ``on_success``, ``on_failure``,
#: ``time_limit``... would let a sender change how a worker treats the message, and
#: ``max_age`` would have it skipped and nacked (dead-lettered by RabbitMQ, without a reason).
OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "eta": ("a number (ms since the epoch)", _number),
    "retries": ("a non-negative integer", _nonneg_int),
    "first_failure_at": ("an integer (ms since the epoch)", _int),
    "requeue_timestamp": ("an integer (ms since the epoch)", _int),
    "traceback": ("a string", lambda v: isinstance(v, str)),
    "replays": ("a non-negative integer", _nonneg_int),
    "last_dead_letter_reason": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "broker_priority": ("an integer from 0 to 255 or null",
                        lambda v: v is None or (_int(v) and 0 <= v <= 255)),
    "dead_letter": ("an object", lambda v: isinstance(v, dict)),
    # A dead letter whose durable record is still to be written (infra/middleware/deadletters.py):
    # the message is never run again, only dead-lettered.
    "dead_letter_pending": ("an object", lambda v: isinstance(v, dict)),
    # A producer's signature and an operator's countersignature of a replay (infra/auth.py);
    # their fields are checked by the authentication middleware.
    "ballast_auth": ("an object", lambda v: isinstance(v, dict)),
    "ballast_replay": ("an object", lambda v: isinstance(v, dict)),
}


@dataclass(frozen=True)
class Verdict:
    """What ``check`` found.

    Parameters:
      fields: the envelope's fields when it is valid (ready for ``dramatiq.Message``).
      reason: one line saying what is wrong, or None when valid.
      salvage: as much of the envelope as can be kept, shaped as a valid one, for the
        dead letter (with ``raw`` when the body could not be kept whole).
    """

    fields: dict[str, Any] | None
    reason: str | None = None
    salvage: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Refused(Exception):
    pass


def _no_constants(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _walk(value: Any, where: str, depth: int = 0) -> None:
    """Every string (key or value) valid UTF-8 and free of NUL; nesting bounded."""
    if depth > MAX_DEPTH:
        raise _Refused(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        _text(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _text(k, f"a key of {where or 'the envelope'}")
            _walk(v, f"{where}.{k[:40]}" if where else k[:40], depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{where}[{i}]", depth + 1)


def _text(s: str, where: str) -> None:
    if "\x00" in s:
        raise _Refused(f"{where} contains a NUL character")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused(f"{where} is not valid UTF-8 (a lone surrogate)") from None


def check(body: bytes, arrived_on: str, actors: dict[str, str]) -> Verdict:
    """Check a raw message body that arrived on queue ``arrived_on``.

    Parameters:
      body: the AMQP body as received.
      arrived_on: the queue it was consumed from (``Q`` or its delayed ``Q.DQ``).
      actors: every actor this worker has, by name, with its queue.
    """
    data: Any = None
    try:
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(f"the body is {len(body)} bytes, more than {MAX_BODY_BYTES}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refused(f"the body is not UTF-8 (byte {exc.start})") from None
        try:
            data = json.loads(text, parse_constant=_no_constants)
        except RecursionError:
            raise _Refused(f"the body is nested more than {MAX_DEPTH} levels deep") from None
        except ValueError as exc:
            raise _Refused(f"the body is not JSON ({str(exc).splitlines()[0][:80]})") from None
        if not isinstance(data, dict):
            raise _Refused(f"the body is {_type(data)}, not a Dramatiq envelope (a JSON object)")
        _walk(data, "")
        _fields(data, arrived_on, actors)
    except _Refused as refused:
        return Verdict(None, f"invalid payload: {refused}", salvage(body, data, arrived_on))
    return Verdict(dict(data))


def _fields(data: dict[str, Any], arrived_on: str, actors: dict[str, str]) -> None:
    missing = [f for f in FIELDS if f not in data and f not in ("message_id", "message_timestamp")]
    if missing:
        raise _Refused(f"not a Dramatiq envelope: {', '.join(missing)} missing")
    extra = sorted(set(data) - set(FIELDS))
    if extra:
        raise _Refused(f"not a Dramatiq envelope: unknown field(s) {', '.join(extra)[:120]}")
    for name in ("queue_name", "actor_name"):
        v = data[name]
        if not isinstance(v, str) or not v:
            raise _Refused(f"{name} must be a non-empty string, not {_type(v)}")
        if len(v) > MAX_NAME_CHARS:
            raise _Refused(f"{name} is longer than {MAX_NAME_CHARS} characters")
    if not isinstance(data["args"], list):
        raise _Refused(f"args must be a list, not {_type(data['args'])}")
    if data["args"]:
        raise _Refused("a command carries no positional args (args must be [])")
    if not isinstance(data["kwargs"], dict):
        raise _Refused(f"kwargs must be a JSON object, not {_type(data['kwargs'])}")
    options = data["options"]
    if not isinstance(options, dict):
        raise _Refused(f"options must be a JSON object, not {_type(options)}")
    for key, value in options.items():
        if key not in OPTIONS:
            raise _Refused(f"options.{key[:40]} is not an option Ballast accepts")
        what, ok = OPTIONS[key]
        if not ok(value):
            raise _Refused(f"options.{key} must be {what}, not {_type(value)}")
    if "message_id" in data:
        mid = data["message_id"]
        if not isinstance(mid, str) or not mid or len(mid) > MAX_MESSAGE_ID_CHARS:
            raise _Refused(f"message_id must be a string of 1 to {MAX_MESSAGE_ID_CHARS} "
                           f"characters, not {_type(mid)}")
    if "message_timestamp" in data and not _int(data["message_timestamp"]):
        raise _Refused(f"message_timestamp must be an integer (ms), not "
                       f"{_type(data['message_timestamp'])}")
    if data["queue_name"] != arrived_on:
        raise _Refused(f"queue_name {data['queue_name'][:80]!r} is not the queue it was "
                       f"published to ({arrived_on})")
    actor = data["actor_name"]
    if actor not in actors:
        raise _Refused(f"unknown actor {actor[:80]!r}")
    canonical = arrived_on[:-3] if arrived_on.endswith(".DQ") else arrived_on
    if actors[actor] != canonical:
        raise _Refused(f"actor {actor} belongs on {actors[actor]}, not {canonical}")


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), default=str).encode("utf-8")


def salvage(body: bytes, data: Any, arrived_on: str) -> dict[str, Any]:
    """A valid envelope holding what can be kept of a refused one, for its dead letter;
    ``raw`` (the body as text, cut to ``RAW_KEPT_CHARS``) when it could not be kept whole."""
    d = data if isinstance(data, dict) else {}
    canonical = arrived_on[:-3] if arrived_on.endswith(".DQ") else arrived_on

    def keep(name: str, ok: Callable[[Any], bool], default: Any) -> Any:
        v = d.get(name)
        return v if ok(v) else default

    def clean(v: Any) -> bool:
        try:
            _walk(v, "x")
            return True
        except _Refused:
            return False

    small = len(body) <= RAW_KEPT_CHARS
    salvage = {
        "queue_name": canonical,
        "actor_name": keep("actor_name", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS
                           and clean(v), None),
        "args": keep("args", lambda v: isinstance(v, list) and small and clean(v), []),
        "kwargs": keep("kwargs", lambda v: isinstance(v, dict) and small and clean(v), {}),
        "options": {k: v for k, v in (d.get("options") if isinstance(d.get("options"), dict)
                                      else {}).items()
                    if k in ("replays", "last_dead_letter_reason") and clean(v)},
        "message_id": keep("message_id", lambda v: isinstance(v, str) and 0 < len(v)
                           <= MAX_MESSAGE_ID_CHARS and clean(v), str(uuid.uuid4())),
        "message_timestamp": keep("message_timestamp", _int, int(time.time() * 1000)),
    }
    intact = all(salvage.get(k) == d.get(k) for k in ("actor_name", "args", "kwargs", "message_id"))
    if not intact or not small:
        raw = body[:RAW_KEPT_CHARS].decode("utf-8", "replace").replace("\x00", "\\u0000")
        salvage["raw"] = raw + (f"... ({len(body)} bytes)" if len(body) > RAW_KEPT_CHARS else "")
    return salvage
