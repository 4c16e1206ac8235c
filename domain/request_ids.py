"""Next-step request ids: the one way a step names the request it hands on.

A handed-on step's request id is derived from what it acts on, so a redelivered or
re-run parent hands on the same id and the child's claim makes it take effect once:

    next_step("conversion", job_id, "poll", poll_no)   # "conversion:42:poll:3"
    next_step(cmd.request_id, "settle")                # "<parent>:settle"

A step that must take effect again on purpose names its attempt (``"retry", n``);
only a request that repeats nothing (an operator's ad-hoc lever, a webhook run) is
``fresh``.  Every id fits the contract's bound of ``MAX_LENGTH`` characters.
"""

from __future__ import annotations

import hashlib
import uuid

#: The contract's bound on a request id (``infra.contract.base``).
MAX_LENGTH = 128


def next_step(*parts: object) -> str:
    """The parts joined by ``:``; when that is too long, the last part (the step) and a
    digest of the rest, so it stays deterministic and within ``MAX_LENGTH``."""
    rid = ":".join(str(p) for p in parts)
    if len(rid) <= MAX_LENGTH:
        return rid
    head = ":".join(str(p) for p in parts[:-1])
    return f"{parts[-1]}:" + hashlib.sha256(head.encode()).hexdigest()


def fresh(*parts: object) -> str:
    """A request id that repeats no other: the parts and a random suffix."""
    return next_step(*parts, uuid.uuid4().hex)
