"""Which test runs need the services: the pure tests (``tests/domain``, ``tests/test_imports.py``,
and ``tests/services`` on the fake unit of work) do not.

A run whose paths all lie under a pure directory starts no database, vhost or Redis db
and needs none of the three services up; any other run (the default, ``tests``) sets
them all up before collection, as before.  Used by ``tests/conftest.py`` and ``bin/test``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Directories (and files) whose tests import nothing of I/O and use no service fixture.
PURE_DIRS = (ROOT / "tests" / "domain", ROOT / "tests" / "test_imports.py",
             ROOT / "tests" / "services")


def _path_of(arg: str) -> Path | None:
    """The file system path a pytest argument names (``path::test`` → ``path``), or None
    for an option."""
    if arg.startswith("-"):
        return None
    return (Path.cwd() / arg.split("::", 1)[0]).resolve()


def is_pure_run(args: list[str]) -> bool:
    """True when ``args`` name paths only, and every one lies under a pure directory.

    Options are ignored, but an option's value (``-k expr``, ``-m mark``) is not a path:
    only arguments that exist on disk count, and a run naming no existing path is the
    default run (``testpaths``), which needs the services."""
    paths = [p for p in (_path_of(a) for a in args) if p is not None and p.exists()]
    return bool(paths) and all(any(p == d or d in p.parents for d in PURE_DIRS) for p in paths)


if __name__ == "__main__":  # bin/test: exit 0 when the run is pure
    sys.exit(0 if is_pure_run(sys.argv[1:]) else 1)
