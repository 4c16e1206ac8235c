"""Verify who sent each command before its unit of work opens (CONTRACT.md, "Signed commands").

A refusal raises ``domain.errors.Unauthorized`` (a permanent BallastError), so the
dead-letter middleware puts the message in ``Q.XQ`` at once with a one-line reason
naming the rule and publishes ``command.rejected``: nothing else changes.  Each
refusal is written to ``auth_log``; a burst from one producer opens a critical
``auth_refusal_burst`` alert.  ``BALLAST_AUTH=warn`` lets unsigned commands through,
logged, counted and alerted; ``off`` checks nothing and says so loudly at start.
"""

from __future__ import annotations

from typing import Any

from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from dramatiq.middleware.middleware import MiddlewareError
from sqlalchemy import text

from domain.auth import (Limits, canonical_bytes, check_fresh, check_key, check_may_send, parse_auth,
                         replay_bytes)
from domain.errors import InvalidCommand, Unauthorized
from infra import auth
from infra.alerts import raise_alert, resolve_all_except
from infra.db.engine import autocommit, get_engine
from infra.errors import Transient
from infra.logs import get_logger
from infra.settings import get_settings
from infra.transaction import Transaction

log = get_logger(__name__)

class Refusal(Unauthorized, MiddlewareError):
    """The refusal as raised by the middleware: a ``MiddlewareError`` so Dramatiq lets it out
    of ``before_process_message`` (it logs and swallows anything else there, and would run
    the actor), and a BallastError so the dead-letter middleware treats it as permanent."""

    @classmethod
    def of(cls, error: Unauthorized) -> "Refusal":
        refusal = cls.__new__(cls)
        Exception.__init__(refusal, str(error))
        refusal.rule, refusal.producer = error.rule, error.producer
        return refusal


class VerificationUnavailable(MiddlewareError, Transient):
    """The signature could not be checked (the database is unreachable...): a transient
    failure, retried with backoff like any other; the actor does not run meanwhile."""


class Misshapen(InvalidCommand, MiddlewareError):
    """Not the contract's envelope at all (positional args, kwargs not an object): invalid
    input, refused before anything else is looked at."""


UNSIGNED = "(unsigned)"  # the producer of an unsigned command, in auth_log and alerts


class Authenticate(Middleware):
    """Checks ``options["ballast_auth"]`` of every message against the producers table and
    the policy of ``domain.auth``.  Parameters come from settings: ``auth`` (mode),
    ``auth_window_s``, ``auth_skew_s``, ``auth_burst_count``, ``auth_burst_window_s``."""

    def __init__(self) -> None:
        s = get_settings()
        self.mode = s.auth
        self.limits = Limits(window_ms=s.auth_window_s * 1000, skew_ms=s.auth_skew_s * 1000)
        self.burst_count = s.auth_burst_count
        self.burst_window_s = s.auth_burst_window_s

    def before_worker_boot(self, broker, worker) -> None:
        if self.mode == "off":
            log.warning("auth.OFF", detail="BALLAST_AUTH=off: commands are NOT verified; anyone "
                        "who can publish to the broker can move money. Throwaway local runs only.")
        elif self.mode == "warn":
            log.warning("auth.warn_only", detail="BALLAST_AUTH=warn: unsigned commands are "
                        "processed (logged, counted, alerted); bad signatures are still refused")
        if auth.ballast_signer() is None and self.mode != "off":
            log.error("auth.no_signing_key", detail="neither BALLAST_SIGNING_KEY nor "
                      "BALLAST_SIGNING_KEY_FILE is set: next steps go out unsigned and are refused")

    def before_process_message(self, broker, message) -> None:
        if self.mode == "off":
            return
        queue, actor = q_name(message.queue_name), message.actor_name
        if message.args or not isinstance(message.kwargs, dict):
            raise Misshapen("invalid payload: a command carries no positional args and its kwargs "
                            "are a JSON object")
        kwargs = message.kwargs
        raw = (message.options or {}).get(auth.OPTION)
        if raw is None:
            if self.mode == "warn":
                log.warning("auth.unsigned_processed", actor=actor)
                try:
                    self._record(broker, UNSIGNED, actor, "unsigned", "warned", message.message_id)
                except Exception as exc:
                    log.error("auth.log_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                return
            self._refuse(broker, Unauthorized("unsigned", f"{actor} carries no signature "
                                      "(options.ballast_auth); signatures are required"),
                         actor, message.message_id)
        producer = None
        try:
            producer, key_id, signed_at, signature = parse_auth(raw)
            with autocommit() as conn:  # one read: no BEGIN, no ROLLBACK
                found = auth.lookup_key(conn, key_id)
            key = check_key(found[0] if found else None, producer, key_id, signed_at)
            auth.verify_signature(found[1], canonical_bytes(
                queue=queue, actor=actor, kwargs=kwargs, signed_at=signed_at,
                producer=producer, key_id=key_id), signature, producer)
            check_may_send(key.roles, producer, actor, kwargs)
            try:
                check_fresh(signed_at, auth.now_ms(), self.limits, producer)
            except Unauthorized as stale:
                if stale.rule != "too_old" or not self._replay_vouched(message, signature):
                    raise
        except Unauthorized as refusal:
            self._refuse(broker, refusal, actor, message.message_id)
        except ValueError:  # json cannot write NaN/Infinity: nothing can have signed it
            self._refuse(broker, Unauthorized("bad_signature", "the kwargs have no canonical "
                                              "form (NaN or Infinity)", producer),
                         actor, message.message_id)
        except Exception as exc:
            # Fail closed: Dramatiq would log anything but a MiddlewareError and run the actor.
            raise VerificationUnavailable(f"could not verify the signature: "
                                          f"{type(exc).__name__}: {exc}"[:300]) from exc
        log.debug("auth.verified", producer=producer, key_id=key_id)

    def _replay_vouched(self, message, original_signature: str) -> bool:
        """An operator replayed this old dead letter (``ballast dlq replay`` countersigns it):
        a fresh, valid countersignature by an active operator's key."""
        raw = (message.options or {}).get(auth.REPLAY_OPTION)
        if not isinstance(raw, dict):
            return False
        try:
            producer, key_id = str(raw["producer"])[:64], str(raw["key_id"])[:64]
            replayed_at, signature = raw["replayed_at"], str(raw["signature"])
            if not isinstance(replayed_at, int):
                return False
            with autocommit() as conn:
                found = auth.lookup_key(conn, key_id)
            key = check_key(found[0] if found else None, producer, key_id, replayed_at)
            if "operator" not in key.roles:
                return False
            auth.verify_signature(found[1], replay_bytes(
                message_id=message.message_id, original_signature=original_signature,
                replayed_at=replayed_at, producer=producer, key_id=key_id), signature, producer)
            check_fresh(replayed_at, auth.now_ms(), self.limits, producer)
        except (Unauthorized, KeyError):
            return False
        log.info("auth.replay_vouched", by=producer)
        return True

    def _refuse(self, broker, refusal: Unauthorized, actor: str, message_id: str) -> None:
        producer = refusal.producer or UNSIGNED
        log.warning("auth.refused", rule=refusal.rule, producer=producer, actor=actor)
        try:
            self._record(broker, producer, actor, refusal.rule, "refused", message_id)
        except Exception as exc:  # the refusal stands even if the log cannot be written
            log.error("auth.log_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        raise Refusal.of(refusal)

    def _record(self, broker, producer: str, actor: str, rule: str, outcome: str,
                message_id: str) -> None:
        """One auth_log row; a burst of refusals (or any unsigned command let through)
        raises an alert, in the same small transaction (published to ``broker``)."""
        with Transaction(broker) as uow:
            # One producer's records are counted one after the other: two refusals counted
            # at once would not see each other's uncommitted row, and a burst could stay one
            # short of its alert.
            uow.conn.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(:p))"),
                             {"ns": AUTH_LOG_LOCK, "p": producer})
            recent = uow.conn.execute(text(
                "WITH ins AS (INSERT INTO auth_log (producer, actor, rule, outcome, message_id) "
                "VALUES (:p, :a, :r, :o, :m)) "
                "SELECT count(*) + 1 FROM auth_log WHERE producer = :p AND outcome = :o "
                "AND at > now() - make_interval(secs => :w)"),
                {"p": producer, "a": actor, "r": rule, "o": outcome, "m": message_id,
                 "w": self.burst_window_s}).scalar_one()
            if outcome == "warned":
                raise_alert(uow, kind="auth_unsigned", severity="warning",
                            subject=f"unsigned {actor} processed (BALLAST_AUTH=warn)",
                            dedupe_key=f"auth:unsigned:{actor}",
                            data={"actor": actor, "recent": int(recent)})
            elif recent >= self.burst_count:
                raise_alert(uow, kind="auth_refusal_burst", severity="critical",
                            subject=f"{recent} commands from {producer!r} refused in "
                                    f"{self.burst_window_s} s (last rule: {rule})",
                            dedupe_key=f"auth:burst:{producer}",
                            data=_burst_data(producer, rule, int(recent), self.burst_window_s))
            uow.commit()


#: Advisory-lock namespace of ``_record``'s per-producer count (``pg_advisory_xact_lock``).
AUTH_LOG_LOCK = 7340218


def _burst_data(producer: str, rule: str, recent: int, window_s: int) -> dict[str, Any]:
    return {"producer": producer, "last_rule": rule, "refusals": recent, "window_s": window_s}


def bursts_over(uow) -> None:
    """A burst alert resolves once its producer has stayed under the threshold for a window;
    a warn-mode alert once no unsigned command of its actor came for a window."""
    s = get_settings()
    still = uow.conn.execute(text(
        "SELECT 'auth:burst:' || producer FROM auth_log WHERE outcome = 'refused' "
        "AND at > now() - make_interval(secs => :w) GROUP BY producer HAVING count(*) >= :n "
        "UNION ALL SELECT 'auth:unsigned:' || actor FROM auth_log WHERE outcome = 'warned' "
        "AND at > now() - make_interval(secs => :w) GROUP BY actor"),
        {"w": s.auth_burst_window_s, "n": s.auth_burst_count}).scalars().all()
    resolve_all_except(uow, "auth:", still)
