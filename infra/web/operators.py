"""Who may use the console: operators, their roles, their passwords (argon2id), the audit.

Roles are ordered: a ``viewer`` reads, an ``operator`` also takes day-to-day actions
(replay, acknowledge, fill, match), an ``admin`` also takes the heavy ones (purge,
configure, resolve, pause a provider, open a cycle).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pathlib import Path

from sqlalchemy import Boolean, Connection, Text, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert

from domain.errors import InvalidCommand, NotFound, Refused
from infra import auth
from infra.db.tables import console_audit, console_operators, console_settings, jsonb
from infra.web.settings import get_web_settings

_op, _au = console_operators.c, console_audit.c

ROLES = ("viewer", "operator", "admin")
#: The least role each action needs; templates show an action only to those who may take it.
ACTION_ROLES: dict[str, str] = {
    "dlq_replay": "operator", "dlq_purge": "admin", "acknowledge_alert": "operator",
    "configure_treasury": "admin", "fill_treasury": "operator", "resolve_challenge": "admin",
    "resolve_market": "admin", "void_market": "admin", "rollback_market": "admin",
    "run_settlement_cycle": "operator", "set_provider_status": "admin",
    "set_auto_rebalance": "admin",
    "match_payments": "operator", "link_payment": "operator", "open_cycle": "admin",
    "close_cycle": "admin", "dispute_market": "operator", "confirm_market": "admin",
    "audit": "admin",
}

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 12  # characters
#: Failed logins of one name within LOCKOUT_WINDOW_S after which it may not log in until
#: they age out of the window (argon2 slows each guess; this caps how many are tried).
MAX_FAILED_LOGINS = 5
LOCKOUT_WINDOW_S = 900  # s

# argon2id with the library's defaults (RFC 9106 low-memory profile: 64 MiB, t=3).
_hasher = PasswordHasher()


@lru_cache(maxsize=1)
def _dummy() -> str:
    """Verified against when the name is unknown, so a miss costs as much as a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    password_changed_at: datetime

    def may(self, role: str) -> bool:
        """Whether this operator's role is at least ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def stamp(self) -> str:
        """Changes when the password does: a session carries it and dies with it."""
        return self.password_changed_at.isoformat()


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise InvalidCommand("an operator name is 1-64 letters, digits, '_', '.', '@', '-'")
    return name


def check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise InvalidCommand(f"a password has at least {MIN_PASSWORD} characters")
    return password


def add(conn: Connection, name: str, role: str, password: str) -> Operator:
    """Add an operator; refused when the name is taken."""
    check_name(name)
    if role not in ROLES:
        raise InvalidCommand(f"role must be one of {', '.join(ROLES)}")
    check_password(password)
    row = conn.execute(
        insert(console_operators)
        .values(name=name, role=role, password_hash=_hasher.hash(password))
        .on_conflict_do_nothing(index_elements=[_op.name])
        .returning(_op.name, _op.role, _op.password_changed_at)).one_or_none()
    if row is None:
        raise Refused(f"operator {name} already exists")
    if role != "viewer":
        ensure_signing_key(conn, name)
    return Operator(row.name, row.role, row.password_changed_at)


def _key_path(name: str) -> Path:
    return Path(get_web_settings().key_dir) / f"{check_name(name)}.json"


def ensure_signing_key(conn: Connection, name: str) -> None:
    """Make ``name`` a producer with the operator role whose private key only this console
    holds (a file in ``BALLAST_WEB_KEY_DIR``), so its actions are commands signed by it.
    Refused when a producer of that name exists with a key the console does not hold."""
    held = signer_of(name)
    if held is not None and auth.lookup_key(conn, held.key_id) is not None:
        return
    signer = auth.add_producer(conn, name, ["operator"], by="console")
    path = _key_path(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # a key this database never registered (rolled back, reset)
    auth.write_key_file(str(path), signer)


def signer_of(name: str) -> auth.Signer | None:
    """The signer of a console operator's actions (None when it has no key here)."""
    return auth.load_signer(None, str(_key_path(name)))


def set_password(conn: Connection, name: str, password: str) -> None:
    check_password(password)
    done = conn.execute(
        update(console_operators).where(_op.name == name)
        .values(password_hash=_hasher.hash(password), password_changed_at=func.now())
        .returning(_op.name)).one_or_none()
    if done is None:
        raise NotFound(f"no operator {name}")


def set_role(conn: Connection, name: str, role: str | None = None,
             disabled: bool | None = None) -> None:
    if role is not None and role not in ROLES:
        raise InvalidCommand(f"role must be one of {', '.join(ROLES)}")
    done = conn.execute(
        update(console_operators).where(_op.name == name)
        .values(role=func.coalesce(literal(role, Text), _op.role),
                disabled=func.coalesce(literal(disabled, Boolean), _op.disabled))
        .returning(_op.name)).one_or_none()
    if done is None:
        raise NotFound(f"no operator {name}")


def listing(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(_op.name, _op.role, _op.disabled, _op.created_at)
                        .order_by(_op.name))
    return [{"name": r.name, "role": r.role, "disabled": r.disabled,
             "created_at": r.created_at.isoformat()} for r in rows]


def get(conn: Connection, name: str) -> Operator | None:
    """The operator, or None when unknown or disabled."""
    row = conn.execute(
        select(_op.name, _op.role, _op.password_changed_at)
        .where(_op.name == name, ~_op.disabled)).one_or_none()
    return None if row is None else Operator(row.name, row.role, row.password_changed_at)


def authenticate(conn: Connection, name: str, password: str) -> Operator | None:
    """The operator when the password is right (rehashing an outdated hash), else None."""
    row = conn.execute(
        select(_op.name, _op.role, _op.password_hash, _op.password_changed_at)
        .where(_op.name == name, ~_op.disabled)).one_or_none()
    try:
        _hasher.verify(row.password_hash if row else _dummy(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        conn.execute(update(console_operators).where(_op.name == name)
                     .values(password_hash=_hasher.hash(password)))
    return Operator(row.name, row.role, row.password_changed_at)


def locked_out(conn: Connection, name: str) -> bool:
    """Whether ``name`` failed to log in MAX_FAILED_LOGINS times in the last window."""
    recent = (select(literal(1)).where(
        _au.operator == name, _au.action == "login", _au.outcome == "refused",
        _au.at > func.now() - timedelta(seconds=LOCKOUT_WINDOW_S))
        .limit(MAX_FAILED_LOGINS).subquery("recent"))
    failed = conn.execute(select(func.count()).select_from(recent)).scalar_one()
    return failed >= MAX_FAILED_LOGINS


def audit(conn: Connection, operator: str | None, action: str, outcome: str,
          detail: dict[str, Any] | None = None, remote_addr: str | None = None) -> None:
    """One line of the console's audit: a login or an action, and how it ended."""
    conn.execute(insert(console_audit).values(
        operator=operator, action=action, outcome=outcome,
        detail=jsonb(json.dumps(detail or {}, default=str)), remote_addr=remote_addr))


def audit_page(conn: Connection, limit: int, offset: int = 0,
               operator: str | None = None) -> list[dict[str, Any]]:
    stmt = (select(_au.id, _au.at, _au.operator, _au.action, _au.outcome, _au.detail,
                   _au.remote_addr).order_by(_au.id.desc()).limit(limit).offset(offset))
    if operator is not None:
        stmt = stmt.where(_au.operator == operator)
    rows = conn.execute(stmt)
    return [{"id": r.id, "at": r.at.isoformat(), "operator": r.operator, "action": r.action,
             "outcome": r.outcome, "detail": r.detail, "remote_addr": r.remote_addr} for r in rows]


def secret_key(conn: Connection) -> str:
    """The session signing key kept in ``console_settings`` (generated the first time)."""
    conn.execute(insert(console_settings).values(key="secret_key", value=secrets.token_hex(32))
                 .on_conflict_do_nothing(index_elements=[console_settings.c.key]))
    return conn.execute(select(console_settings.c.value)
                        .where(console_settings.c.key == "secret_key")).scalar_one()
