"""``status.json`` in the state directory: what the running daemon last saw, for the
``status`` command (a reader of the journal cannot know the last poll or the relay's state).

Written after every poll, atomically (a new file renamed over the old), never fsynced: it is
a view, not a record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["STATUS_FILE", "publish", "read_status"]

STATUS_FILE = "status.json"


def publish(state_dir: Path, data: dict[str, Any]) -> None:
    """Replace ``status.json``; a failure is ignored (the journal is what matters)."""
    target = state_dir / STATUS_FILE
    temporary = target.with_suffix(".tmp")
    try:
        # 0600 whatever the umask: it names the relay's last reply and the journal's counts.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(data))
        os.replace(temporary, target)
    except OSError:
        pass


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last published status, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
