"""Who holds the state directory: the lock file's pid, read without taking the lock."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["lock_holder"]


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``, read from its lock file, if it is alive.

    The lock itself is never tried: holding it even for a moment could make a daemon that
    starts at that instant believe another one runs.
    """
    try:
        text = (state_dir / "lock").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, as another user
    return int(text)
