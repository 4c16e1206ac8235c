"""Producers, their Ed25519 keys, signing and verifying commands (CONTRACT.md, "Signed commands").

Ed25519 (asymmetric): the database and the workers hold only public keys, so nothing a
worker holds lets it forge a producer's command.  A private key is printed once, when it
is made (``ballast producers add`` / ``rotate``), and never stored, logged or emitted.

A signed command carries ``options["ballast_auth"] = {"producer", "key_id", "signed_at",
"signature"}`` beside its kwargs; the signature is over ``domain.auth.canonical_bytes``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Mapping

import dramatiq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from dramatiq.common import q_name
from sqlalchemy import ARRAY, BigInteger, Connection, Engine, Text, bindparam, cast, extract, func
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from domain.auth import IDENTITY_FIELDS, KeyRecord, canonical_bytes, replay_bytes, roles_for
from domain.errors import InvalidCommand, Refused, Unauthorized
from infra.db.tables import jsonb, producer_audit, producer_keys, producers
from infra.settings import get_settings

#: The producer name of Ballast's own components (workers, scheduler).
BALLAST = "ballast"

#: What a producer's name may look like (the producers table checks it too).
PRODUCER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

OPTION = "ballast_auth"  # the envelope option that carries the signature fields
REPLAY_OPTION = "ballast_replay"  # an operator's countersignature of a replayed dead letter


def now_ms() -> int:
    return int(time.time() * 1000)


def key_id_of(public_raw: bytes) -> str:
    """A key's id: ``k_`` + the first 16 hex digits of the SHA-256 of its raw public key."""
    return "k_" + hashlib.sha256(public_raw).hexdigest()[:16]


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Signer:
    """Signs commands as one producer with one key.

    Parameters:
      producer: the producer's name; key_id: the key's id; private: the Ed25519 private key.
    """

    producer: str
    key_id: str
    private: Ed25519PrivateKey

    def __repr__(self) -> str:  # never the key
        return f"Signer(producer={self.producer!r}, key_id={self.key_id!r})"

    @classmethod
    def generate(cls, producer: str) -> "Signer":
        private = Ed25519PrivateKey.generate()
        return cls(producer, key_id_of(_public_raw(private)), private)

    @property
    def public_key(self) -> str:
        """The raw public key, base64: what the database stores."""
        return base64.b64encode(_public_raw(self.private)).decode()

    def auth(self, queue: str, actor: str, kwargs: Mapping[str, Any],
             signed_at: int | None = None) -> dict[str, Any]:
        """The ``ballast_auth`` option for this command."""
        signed_at = now_ms() if signed_at is None else signed_at
        data = canonical_bytes(queue=queue, actor=actor, kwargs=kwargs, signed_at=signed_at,
                               producer=self.producer, key_id=self.key_id)
        return {"producer": self.producer, "key_id": self.key_id, "signed_at": signed_at,
                "signature": base64.b64encode(self.private.sign(data)).decode()}

    def sign(self, message: dramatiq.Message, signed_at: int | None = None) -> dramatiq.Message:
        """The same message with its signature in ``options`` (kwargs untouched)."""
        auth = self.auth(q_name(message.queue_name), message.actor_name, message.kwargs, signed_at)
        return message.copy(options={**message.options, OPTION: auth})

    def countersign(self, body: dict[str, Any], replayed_at: int | None = None) -> dict[str, Any]:
        """A dead letter's envelope with this operator's ``ballast_replay`` countersignature:
        it lets a replay older than the window through (the original signature must still
        verify).  Unsigned envelopes are left as they are."""
        options = dict(body.get("options") or {})
        original = options.get(OPTION)
        if not isinstance(original, dict) or not isinstance(original.get("signature"), str):
            return body
        replayed_at = now_ms() if replayed_at is None else replayed_at
        data = replay_bytes(message_id=str(body.get("message_id")), original_signature=original["signature"],
                            replayed_at=replayed_at, producer=self.producer, key_id=self.key_id)
        options[REPLAY_OPTION] = {"producer": self.producer, "key_id": self.key_id,
                                  "replayed_at": replayed_at,
                                  "signature": base64.b64encode(self.private.sign(data)).decode()}
        return {**body, "options": options}

    def material(self) -> dict[str, str]:
        """The key material a producer keeps: printed once, never stored by Ballast."""
        seed = self.private.private_bytes(serialization.Encoding.Raw,
                                          serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        pem = self.private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
        return {"producer": self.producer, "key_id": self.key_id, "algorithm": "ed25519",
                "private_key": base64.b64encode(seed).decode(), "private_key_pem": pem}

    @classmethod
    def from_material(cls, text_: str) -> "Signer":
        """Read the JSON document ``material()`` printed (from a variable or a file)."""
        try:
            doc = json.loads(text_)
            producer, key_id = doc["producer"], doc["key_id"]
            if doc.get("private_key"):
                private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(doc["private_key"]))
            else:
                private = serialization.load_pem_private_key(doc["private_key_pem"].encode(), None)
        except Exception as exc:
            # Never the text itself: it is a secret.
            raise InvalidCommand(f"key material is not a Ballast key document ({type(exc).__name__})") from None
        if not isinstance(private, Ed25519PrivateKey) or key_id_of(_public_raw(private)) != key_id:
            raise InvalidCommand("key material does not match its key_id")
        return cls(producer, key_id, private)


def load_signer(value: str | None, path: str | None) -> Signer | None:
    """A signer from key material in ``value``, else in the file ``path``; None if neither."""
    if value:
        return Signer.from_material(value)
    if path and Path(path).exists():
        return Signer.from_material(Path(path).read_text())
    return None


def write_key_file(path: str, signer: Signer) -> None:
    """Write key material readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(signer.material(), f)


def ensure_ballast_key(engine: Engine, default_file: str | None = None,
                       by: str = "ballast migrate") -> Signer | None:
    """Ballast's own producer and key: the key of BALLAST_SIGNING_KEY, else of
    BALLAST_SIGNING_KEY_FILE (or ``default_file``), made there (owner-only) if the file does
    not exist yet; its public key registered.  None when no key is configured."""
    s = get_settings()
    signer = ballast_signer()
    if signer is None:
        path = s.signing_key_file or default_file
        if not path:
            return None
        if not Path(path).exists():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_key_file(path, Signer.generate(BALLAST))
        signer = load_signer(None, path)
        _ballast.clear()
    assert signer is not None
    with engine.begin() as conn:
        register_key(conn, signer, ["ballast"], by=by)
    return signer


_ballast: dict[str, Signer | None] = {}
_ballast_lock = threading.Lock()


def ballast_signer() -> Signer | None:
    """Ballast's own signer (BALLAST_SIGNING_KEY or BALLAST_SIGNING_KEY_FILE), cached."""
    s = get_settings()
    cache_key = f"{bool(s.signing_key)}:{s.signing_key_file}"
    with _ballast_lock:
        if cache_key not in _ballast:
            _ballast[cache_key] = load_signer(s.signing_key, s.signing_key_file)
        return _ballast[cache_key]


def operator_signer() -> Signer | None:
    """The operator's signer (BALLAST_OPERATOR_KEY or BALLAST_OPERATOR_KEY_FILE)."""
    s = get_settings()
    return load_signer(s.operator_key, s.operator_key_file)


def sign_as_ballast(message: dramatiq.Message) -> dramatiq.Message:
    """Ballast's own next steps and scheduled firings: signed when a key is configured
    (without one they go unsigned, and a worker requiring signatures refuses them)."""
    signer = ballast_signer()
    return signer.sign(message) if signer is not None else message


# --- the producers table ---------------------------------------------------------------

_p, _k, _a = producers.c, producer_keys.c, producer_audit.c

#: A key's record (validity in ms since the epoch) and its producer's roles, by key id.
LOOKUP_KEY = (
    select(_k.producer, _p.roles, _k.key_id, _k.public_key,
           cast(extract("epoch", _k.valid_from) * 1000, BigInteger).label("valid_from_ms"),
           cast(extract("epoch", _k.valid_until) * 1000, BigInteger).label("valid_until_ms"),
           _k.revoked_at.is_not(None).label("key_revoked"),
           _p.revoked_at.is_not(None).label("producer_revoked"))
    .select_from(producer_keys.join(producers, _p.name == _k.producer))
    .where(_k.key_id == bindparam("k")))

def _audit(conn: Connection, producer: str, action: str, by: str, key_id: str | None = None,
           detail: Mapping[str, Any] | None = None) -> None:
    conn.execute(insert(producer_audit).values(
        producer=producer, action=action, key_id=key_id, performed_by=by,
        detail=jsonb(json.dumps(detail or {}))))


def _insert_key(conn: Connection, producer: str, signer: Signer) -> None:
    conn.execute(insert(producer_keys).values(key_id=signer.key_id, producer=producer,
                                              public_key=signer.public_key))


def add_producer(conn: Connection, name: str, roles: Iterable[str], by: str) -> Signer:
    """A new producer with one fresh key; returns the signer (its material is shown once)."""
    roles = list(dict.fromkeys(roles))
    exists = conn.execute(select(_p.name).where(_p.name == name)).first()
    if exists:
        raise Refused(f"producer {name!r} already exists (rotate its key instead)")
    conn.execute(insert(producers).values(name=name, roles=roles, created_by=by))
    signer = Signer.generate(name)
    _insert_key(conn, name, signer)
    _audit(conn, name, "add", by, signer.key_id, {"roles": roles})
    return signer


def register_key(conn: Connection, signer: Signer, roles: Iterable[str], by: str,
                 action: str = "init") -> bool:
    """Make sure ``signer``'s producer exists with ``roles`` and knows its public key
    (``ballast migrate`` for Ballast's own key).  True when something changed."""
    roles = list(roles)
    changed = conn.execute(
        insert(producers).values(name=signer.producer, roles=roles, created_by=by)
        .on_conflict_do_nothing(index_elements=[_p.name]).returning(_p.name)
    ).first() is not None
    known = conn.execute(select(_k.producer).where(_k.key_id == signer.key_id)
                         ).scalar_one_or_none()
    if known is not None and known != signer.producer:
        raise Refused(f"key {signer.key_id} belongs to another producer")
    if known is None:
        _insert_key(conn, signer.producer, signer)
        changed = True
    if changed:
        _audit(conn, signer.producer, action, by, signer.key_id, {"roles": roles})
    return changed


def rotate_key(conn: Connection, name: str, overlap_s: int, by: str) -> Signer:
    """A new key for ``name``; its current keys stay valid for ``overlap_s`` more seconds."""
    _active_producer(conn, name)
    overlap_end = func.now() + timedelta(seconds=overlap_s)
    ended = conn.execute(
        update(producer_keys)
        .where(_k.producer == name, _k.revoked_at.is_(None),
               _k.valid_until.is_(None) | (_k.valid_until > overlap_end))
        .values(valid_until=func.greatest(_k.valid_from + timedelta(milliseconds=1), overlap_end))
        .returning(_k.key_id)).scalars().all()
    signer = Signer.generate(name)
    _insert_key(conn, name, signer)
    _audit(conn, name, "rotate", by, signer.key_id, {"overlap_s": overlap_s, "ending": list(ended)})
    return signer


def revoke(conn: Connection, name: str, by: str, key_id: str | None = None) -> list[str]:
    """Revoke one key, or the producer and all its keys: effective at once."""
    _active_producer(conn, name)
    if key_id is not None:
        done = conn.execute(
            update(producer_keys)
            .where(_k.producer == name, _k.key_id == key_id, _k.revoked_at.is_(None))
            .values(revoked_at=func.now()).returning(_k.key_id)).scalars().all()
        if not done:
            raise Refused(f"producer {name!r} has no unrevoked key {key_id!r}")
        _audit(conn, name, "revoke_key", by, key_id)
        return list(done)
    conn.execute(update(producers).where(_p.name == name)
                 .values(revoked_at=func.now(), revoked_by=by))
    done = conn.execute(
        update(producer_keys).where(_k.producer == name, _k.revoked_at.is_(None))
        .values(revoked_at=func.now()).returning(_k.key_id)).scalars().all()
    _audit(conn, name, "revoke", by, None, {"keys": list(done)})
    return list(done)


def _active_producer(conn: Connection, name: str) -> None:
    row = conn.execute(select(_p.revoked_at).where(_p.name == name).with_for_update()).first()
    if row is None:
        raise Refused(f"no producer {name!r}")
    if row.revoked_at is not None:
        raise Refused(f"producer {name!r} is revoked")


def list_producers(conn: Connection) -> list[dict[str, Any]]:
    """Every producer with its roles and keys (ids and validity; never key material)."""
    rows = conn.execute(
        select(_p.name, _p.roles, _p.created_at, _p.created_by, _p.revoked_at, _p.revoked_by)
        .order_by(_p.name)).all()
    active = (_k.revoked_at.is_(None) & (_k.valid_from <= func.now())
              & (_k.valid_until.is_(None) | (_k.valid_until > func.now())))
    keys = conn.execute(
        select(_k.key_id, _k.producer, _k.valid_from, _k.valid_until, _k.revoked_at,
               active.label("active")).order_by(_k.valid_from)).all()
    out = []
    for p in rows:
        out.append({
            "name": p.name, "roles": list(p.roles), "created_at": p.created_at,
            "created_by": p.created_by, "revoked_at": p.revoked_at,
            "keys": [{"key_id": k.key_id, "valid_from": k.valid_from, "valid_until": k.valid_until,
                      "revoked_at": k.revoked_at, "active": bool(k.active)}
                     for k in keys if k.producer == p.name],
        })
    return out


def audit_of(conn: Connection, name: str | None = None) -> list[dict[str, Any]]:
    stmt = select(_a.id, _a.producer, _a.action, _a.key_id, _a.performed_by, _a.detail,
                  _a.at).order_by(_a.id)
    if name is not None:
        stmt = stmt.where(_a.producer == name)
    rows = conn.execute(stmt).all()
    return [dict(r._mapping) for r in rows]


def lookup_key(conn: Connection, key_id: str) -> tuple[KeyRecord, str] | None:
    """The key's record and its base64 public key, or None."""
    row = conn.execute(LOOKUP_KEY, {"k": key_id}).first()
    if row is None:
        return None
    return (KeyRecord(row.producer, tuple(row.roles), row.key_id, int(row.valid_from_ms),
                      None if row.valid_until_ms is None else int(row.valid_until_ms),
                      bool(row.key_revoked), bool(row.producer_revoked)), row.public_key)


def verify_signature(public_key_b64: str, data: bytes, signature_b64: str, producer: str) -> None:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64)).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise Unauthorized("bad_signature",
                           "the signature does not match the command (tampered, or signed with "
                           "another key)", producer) from None


# --- outgoing: alert webhooks ----------------------------------------------------------

def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 of ``f"{timestamp}."`` followed by the raw body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def webhook_headers(secret: str | None, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """``X-Ballast-Timestamp`` (Unix seconds) and ``X-Ballast-Signature``; none without a secret."""
    if not secret:
        return {}
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"X-Ballast-Timestamp": str(timestamp),
            "X-Ballast-Signature": webhook_signature(secret, timestamp, body)}


# --- signing on the publishing side (tests, the demo, bench) ----------------------------

class Keyring:
    """Producers made on demand, each with a key held in memory: how the test harness and
    the demo sign what they send, as upstream apps and operators would.

    A command naming someone in an identity field (``performed_by``…) is signed by that
    producer (made an operator); otherwise by ``{prefix}-{role}`` for the first role the
    policy lets send it; Ballast's internal steps by Ballast's own key.

    Parameters:
      engine: the database the workers verify against.
      prefix: names this keyring's producers (``test``, ``demo``).
      ballast: Ballast's own signer (already registered).
      by: who is recorded as making the producers.
    """

    def __init__(self, engine: Engine, prefix: str, ballast: Signer | None, by: str) -> None:
        self.engine = engine
        self.prefix = prefix
        self.ballast = ballast
        self.by = by
        self._signers: dict[str, Signer] = {}
        self._lock = threading.Lock()

    def producer(self, name: str, roles: Iterable[str]) -> Signer:
        """This keyring's signer for ``name``: the producer is made, or given a fresh key."""
        with self._lock:
            signer = self._signers.get(name)
            if signer is None:
                roles = list(roles)
                with self.engine.begin() as conn:
                    exists = conn.execute(select(_p.roles, _p.revoked_at)
                                          .where(_p.name == name)).first()
                    if exists is None:
                        signer = add_producer(conn, name, roles, self.by)
                    else:
                        if exists.revoked_at is not None:
                            raise Refused(f"producer {name!r} is revoked")
                        missing = [r for r in roles if r not in exists.roles]
                        if missing:
                            conn.execute(
                                update(producers).where(_p.name == name)
                                .values(roles=_p.roles.op("||")(
                                    bindparam("r", missing, type_=ARRAY(Text)))))
                        signer = Signer.generate(name)
                        register_key(conn, signer, roles, self.by, action="rotate")
                self._signers[name] = signer
            return signer

    def signer_for(self, actor: str, kwargs: Mapping[str, Any]) -> Signer:
        allowed = roles_for(actor, kwargs)
        for field in IDENTITY_FIELDS:
            if isinstance(kwargs.get(field), str) and PRODUCER_NAME.fullmatch(kwargs[field]):
                return self.producer(kwargs[field], ["operator"])
        role = allowed[0]
        if role == "ballast":
            if self.ballast is None:
                raise RuntimeError("no Ballast signing key to sign an internal step")
            return self.ballast
        return self.producer(f"{self.prefix}-{role}", [role])

    def sign(self, message: dramatiq.Message, signed_at: int | None = None) -> dramatiq.Message:
        return self.signer_for(message.actor_name, message.kwargs).sign(message, signed_at)
