"""``status.json`` in the state directory: what the running daemon last saw, for the
``status`` command (a reader of the journal cannot know the last poll or the relay's state).

Written after every poll, atomically (a new file renamed over the old), never fsynced: it is
a view, not a record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kanidm_mail_sender import __version__
from kanidm_mail_sender.engine import Engine

__all__ = ["STATUS_FILE", "publish", "read_status"]

STATUS_FILE = "status.json"


def snapshot(engine: Engine, *, started: float, running: bool) -> dict[str, Any]:
    """The daemon's state now, as plain JSON values (times in Unix seconds)."""
    now, monotonic = time.time(), time.monotonic()
    health = engine.health
    last = engine.dispatcher.last_poll
    paused_for = health.paused_until - monotonic
    return {
        "pid": os.getpid(),
        "version": __version__,
        "running": running,
        "started": started,
        "written": now,
        "last_poll": None if last is None else {"at": last[0], "error": last[1]},
        "ready_at_last_poll": int(
            engine.metrics.registry.get_sample_value("kanidm_mail_sender_queue_size") or 0
        ),
        "relay": {
            "paused": health.paused,
            "paused_until": now + paused_for if paused_for > 0 else None,
            "concurrency": health.limit,
            "last_error": health.last_error or None,
            "cause": (health.cause or None) if health.paused else None,
            "evidence": (health.reason or None) if health.paused else None,
        },
    }


def publish(state_dir: Path, data: dict[str, Any]) -> None:
    """Replace ``status.json``; a failure is ignored (the journal is what matters)."""
    target = state_dir / STATUS_FILE
    temporary = target.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(data), encoding="utf-8")
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
