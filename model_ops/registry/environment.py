"""What a version was built with: Python, platform, key package versions, the git commit of the working tree.

Captured once per process (it does not change while a process runs) and recorded on every registered version, so
``reproduce`` can say "scikit-learn 1.9.1 then, 1.10.0 now" instead of just "digest differs".
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = ("model_ops", "scikit-learn", "skops", "numpy", "scipy", "pandas", "pyarrow", "deltalake", "dagster")
ACTOR_ENV = "MODEL_OPS_ACTOR"


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "packages": packages,
    }


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the code being run: $MODEL_OPS_GIT_COMMIT, else `git rev-parse HEAD` (suffixed -dirty)."""
    if os.environ.get("MODEL_OPS_GIT_COMMIT"):
        return os.environ["MODEL_OPS_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_actor() -> str:
    """The actor name of a local process: ``$MODEL_OPS_ACTOR`` (a claim), else the OS user of the effective uid.

    Not ``getpass.getuser()``: that reads ``$USER`` and ``$LOGNAME`` first, which anyone sets at will. The
    registry itself uses the proven identity (``identity.py``) when nothing is claimed; this is for callers that
    want the same name without opening a registry."""
    from model_ops.registry.identity import local_user

    return os.environ.get(ACTOR_ENV) or local_user()
