"""The operator behind a CLI lever: ``--by`` must be the holder of the operator's key."""

from __future__ import annotations

import base64

from domain.auth import check_key
from domain.errors import Unauthorized
from infra import auth
from infra.cli.output import fail
from infra.db.engine import get_engine
from infra.settings import get_settings


def operator_identity(by: str | None) -> str:
    """An operator lever that changes state: ``--by`` must be the operator whose key this
    process holds (BALLAST_OPERATOR_KEY / _FILE), an active producer with the operator role.
    Without ``--by`` it is the operator's name.  With BALLAST_AUTH=off nothing is checked
    (and a missing ``--by`` is ``operator``).  Exits 2 with the rule otherwise."""
    if get_settings().auth == "off":
        return by or "operator"
    signer = auth.operator_signer()
    if signer is None:
        fail("unauthorized by rule unsigned: this lever needs the operator's key "
             "(BALLAST_OPERATOR_KEY or BALLAST_OPERATOR_KEY_FILE)", 2)
    try:
        with get_engine().connect() as conn:
            found = auth.lookup_key(conn, signer.key_id)
        now = auth.now_ms()
        key = check_key(found[0] if found else None, signer.producer, signer.key_id, now)
        proof = f"ballast-cli:{signer.key_id}:{now}".encode()
        auth.verify_signature(found[1], proof, base64.b64encode(signer.private.sign(proof)).decode(),
                              signer.producer)
        if "operator" not in key.roles:
            raise Unauthorized("role_may_not_send", f"{signer.producer!r} is not an operator")
        if by is not None and by != signer.producer:
            raise Unauthorized("identity_not_signer", f"--by {by!r} is not the signer {signer.producer!r}")
    except Unauthorized as exc:
        fail(str(exc), 2)
    return signer.producer
