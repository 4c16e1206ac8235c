"""Test-only fault injection: crash a worker at a named point, once.

``BALLAST_FAULTS="after_commit:deposit,before_publish"`` arms points (optionally
for one actor); ``BALLAST_FAULT_DIR`` holds a marker per point so each fires
once, even across the restarts it causes.  Empty in production: a no-op.
"""

from __future__ import annotations

import os
import signal

from infra.settings import get_settings


def point(name: str, actor: str | None = None) -> None:
    """SIGKILL this process if ``name`` (for ``actor``) is armed and has not fired yet."""
    armed = get_settings().faults
    if not armed:
        return
    for item in armed.split(","):
        fault, _, only = item.strip().partition(":")
        if fault != name or (only and only != actor):
            continue
        marker = os.path.join(get_settings().fault_dir or "/tmp", f"ballast-fault-{fault}-{only}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        # The whole worker (its process group), as `kill -9` of a pod would.
        os.killpg(os.getpgid(0), signal.SIGKILL)
