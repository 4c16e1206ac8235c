"""Who may send what: the roles, the policy table, the canonical form that is signed,
and the rules a signed command must pass (CONTRACT.md, "Signed commands").

Pure: verifying the Ed25519 signature itself is infra's (infra/auth.py); everything
a signature is checked *against* is decided here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from domain.errors import Unauthorized

#: Every role a producer may hold.  ``ballast`` is Ballast's own (workers, scheduler).
ROLES = ("wagering", "funding", "journal", "operator", "ballast")

#: Kwargs that name the person or service acting: each must equal the signer.
IDENTITY_FIELDS = ("admin_id", "performed_by", "resolved_by", "requested_by", "disputed_by",
                   "confirmed_by", "closed_by", "acknowledged_by")

#: Which actors each role may send.  An actor in no role but ``ballast`` (the internal
#: steps, and any actor not in this table) accepts only Ballast's own signature.
POLICY: dict[str, frozenset[str]] = {
    "wagering": frozenset({
        "open_challenge", "join_challenge", "open_market", "place_commitment",
    }),
    "funding": frozenset({"deposit", "withdraw", "record_buffer_flow"}),
    "journal": frozenset({"register_character", "create_participation", "import_wallet_journal"}),
    "operator": frozenset({
        "adjust_balance", "set_tier", "fund_treasury",
        "open_challenge", "configure_treasury", "fill_treasury", "resolve_challenge",
        "open_market", "resolve_market", "void_market", "rollback_market",
        "run_settlement_cycle", "plan_cycle", "open_cycle", "link_payment",
        "dispute_market", "confirm_market", "retry_market_settlement", "close_cycle",
        "retry_challenge_settlement",
        "acknowledge_alert", "set_provider_status", "set_auto_rebalance",
        "set_buffer_thresholds", "add_provider", "update_provider",
        "resolve_alert", "convert_manually", "cancel_conversion", "freeze_conversions",
        "thaw_conversions", "complete_conversion", "fail_conversion", "report_custody",
        "set_guard_limits", "add_persona",
        # Sweeps an operator may kick now (each is idempotent on its request id):
        "evaluate_alerts", "match_payments", "poll_conversion", "sweep_outbox",
        "send_daily_summary",
    }),
    "ballast": frozenset({
        # Next steps handed on through the outbox.
        "assign_personas", "create_treasury_matches", "settle_challenge", "settle_market",
        "submit_conversion", "evaluate_balance_alerts", "deliver_alert_webhooks",
        "match_payments",
        # Scheduled firings (schedules/table.py).
        "run_settlement_cycle", "poll_conversion", "evaluate_alerts", "sweep_outbox",
        "send_daily_summary", "probe_providers", "prune_retention",
        # Run in process by the callback endpoint, once a callback is verified.
        "apply_conversion_callback",
    }),
}

#: A command whose kwarg has this value needs this role (beyond the table above):
#: an admin challenge is filled with treasury money, so only an operator opens one.
ROLE_WHEN: dict[str, tuple[str, Any, str]] = {
    "open_challenge": ("admin_created", True, "operator"),
}

#: The signature fields a command carries in ``options["ballast_auth"]``.
AUTH_FIELDS = ("producer", "key_id", "signed_at", "signature")


def canonical_bytes(*, queue: str, actor: str, kwargs: Mapping[str, Any], signed_at: int,
                    producer: str, key_id: str) -> bytes:
    """The bytes a producer signs: UTF-8 JSON of these six fields, keys sorted (at every
    level), no whitespace, non-ASCII characters as themselves (``ensure_ascii=False``).
    ``signed_at`` is integer milliseconds since the Unix epoch."""
    doc = {"queue": queue, "actor": actor, "kwargs": kwargs, "signed_at": signed_at,
           "producer": producer, "key_id": key_id}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


#: The fields of a replay's countersignature, ``options["ballast_replay"]``.
REPLAY_FIELDS = ("producer", "key_id", "replayed_at", "signature")


def replay_bytes(*, message_id: str, original_signature: str, replayed_at: int, producer: str,
                 key_id: str) -> bytes:
    """What an operator signs to replay a dead letter older than the window: the same
    canonical form over the message id and the original signature."""
    doc = {"message_id": message_id, "original_signature": original_signature,
           "replayed_at": replayed_at, "producer": producer, "key_id": key_id}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def roles_for(actor: str, kwargs: Mapping[str, Any]) -> list[str]:
    """The roles that may send ``actor`` with these kwargs, in the table's order."""
    allowed = [role for role in ROLES if actor in POLICY[role]]
    if not allowed:
        return ["ballast"]
    when = ROLE_WHEN.get(actor)
    if when is not None and kwargs.get(when[0]) == when[1]:
        allowed = [r for r in allowed if r in (when[2], "ballast")]
    return allowed


def policy_table() -> list[dict[str, Any]]:
    """One row per role: what ``ballast producers roles`` shows."""
    rows = []
    for role in ROLES:
        extra = [f"{actor} with {field}={value!r} needs {need}"
                 for actor, (field, value, need) in ROLE_WHEN.items()
                 if actor in POLICY[role] and need != role]
        rows.append({"role": role, "actors": sorted(POLICY[role]), "conditions": extra})
    return rows


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the database knows of a producer's key (no private part, ever).

    Parameters:
      producer: the producer's name; roles: its roles.
      key_id: the key's id; valid_from_ms, valid_until_ms: its validity (ms; until None = open).
      key_revoked, producer_revoked: whether either was revoked.
    """

    producer: str
    roles: tuple[str, ...]
    key_id: str
    valid_from_ms: int
    valid_until_ms: int | None
    key_revoked: bool
    producer_revoked: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """Parameters: window_ms: the oldest signature accepted (shorter than request ids are
    remembered); skew_ms: how far in the future ``signed_at`` may be (clock skew)."""

    window_ms: int
    skew_ms: int


def check_key(key: KeyRecord | None, producer: str, key_id: str, signed_at: int) -> KeyRecord:
    """The key exists, belongs to ``producer``, is not revoked and was valid at ``signed_at``."""
    if key is None or key.producer != producer:
        raise Unauthorized("unknown_key", f"producer {producer!r} has no key {key_id!r}", producer)
    if key.producer_revoked:
        raise Unauthorized("revoked_producer", f"producer {producer!r} is revoked", producer)
    if key.key_revoked:
        raise Unauthorized("revoked_key", f"key {key_id!r} of {producer!r} is revoked", producer)
    if signed_at < key.valid_from_ms or (key.valid_until_ms is not None
                                         and signed_at >= key.valid_until_ms):
        raise Unauthorized("key_not_valid",
                           f"key {key_id!r} of {producer!r} was not valid when it signed", producer)
    return key


def check_fresh(signed_at: int, now_ms: int, limits: Limits, producer: str | None = None) -> None:
    """Not older than the window, not further in the future than the skew."""
    if signed_at > now_ms + limits.skew_ms:
        raise Unauthorized("signed_in_future",
                           f"signed_at is {signed_at - now_ms} ms in the future "
                           f"(at most {limits.skew_ms} ms of clock skew)", producer)
    if now_ms - signed_at > limits.window_ms:
        raise Unauthorized("too_old",
                           f"signed {(now_ms - signed_at) // 1000} s ago; signatures are "
                           f"accepted for {limits.window_ms // 1000} s", producer)


def check_may_send(roles: tuple[str, ...], producer: str, actor: str,
                   kwargs: Mapping[str, Any]) -> None:
    """The producer's roles allow ``actor``, and every identity field names the producer."""
    allowed = roles_for(actor, kwargs)
    if not set(roles) & set(allowed):
        raise Unauthorized("role_may_not_send",
                           f"{producer!r} ({', '.join(roles) or 'no role'}) may not send {actor}; "
                           f"needs {' or '.join(allowed)}", producer)
    for field in IDENTITY_FIELDS:
        if field in kwargs and kwargs[field] != producer:
            raise Unauthorized("identity_not_signer",
                               f"{field} {kwargs[field]!r} is not the signer {producer!r}", producer)


def parse_auth(raw: Any) -> tuple[str, str, int, str]:
    """``options["ballast_auth"]`` as (producer, key_id, signed_at, signature), or refused."""
    if not isinstance(raw, dict) or set(raw) - set(AUTH_FIELDS) or set(AUTH_FIELDS) - set(raw):
        raise Unauthorized("malformed_signature",
                           f"ballast_auth must have exactly {', '.join(AUTH_FIELDS)}")
    producer, key_id, signed_at, signature = (raw[f] for f in AUTH_FIELDS)
    if not (isinstance(producer, str) and isinstance(key_id, str) and isinstance(signature, str)
            and isinstance(signed_at, int) and not isinstance(signed_at, bool)):
        raise Unauthorized("malformed_signature",
                           "producer, key_id and signature are strings, signed_at an integer (ms)")
    return producer[:64], key_id[:64], signed_at, signature
