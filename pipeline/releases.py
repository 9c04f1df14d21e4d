"""Which code is running: the git commit of Molt's own checkout."""

from __future__ import annotations

from functools import cache
from importlib import metadata

from pipeline.config import MOLT_HOME
from pipeline.exceptions import GitError
from pipeline.git import Git


def checkout_version() -> str:
    """The commit Molt's checkout is at now (may differ from the running code)."""
    try:
        return Git(MOLT_HOME).head()
    except GitError:
        try:
            return metadata.version("molt-bot")
        except metadata.PackageNotFoundError:
            return "unknown"


@cache
def running_version() -> str:
    """The commit of the code this process started with."""
    return checkout_version()
