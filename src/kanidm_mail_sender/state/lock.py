"""The state directory's single-instance lock: the journal takes it (one daemon per
directory), the operator commands read who holds it without taking it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from kanidm_mail_sender.errors import AlreadyRunning, StateError
from kanidm_mail_sender.logs import get_logger

__all__ = ["STATE_DIR_ADVICE", "lock_holder", "take_lock"]

log = get_logger(__name__)

# What to do about a state directory that cannot be used, for the daemon and --check alike.
STATE_DIR_ADVICE = (
    "set state_dir to a directory the service user owns, or use systemd's StateDirectory="
)


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


def take_lock(state_dir: Path) -> int:
    """Create ``state_dir`` (private) if needed and hold its lock; returns the lock file's
    descriptor, which the holder closes to let go."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _keep_private(state_dir)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(
            f"state directory {state_dir} is not writable ({exc.strerror}); {STATE_DIR_ADVICE}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AlreadyRunning(
            f"another kanidm-mail-sender already uses {state_dir}; stop it first, or give "
            "this one its own state_dir (two senders on one queue would mail twice)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _keep_private(state_dir: Path) -> None:
    """A state directory the group or others can enter (made 0755 by ``mkdir`` or a
    package) exposes the journal's name and the retry requests: tightened to 0700 when it is
    ours, else a warning naming the fix."""
    found = state_dir.stat()
    if not found.st_mode & 0o077:
        return
    mode = oct(found.st_mode & 0o777)
    if found.st_uid == os.geteuid():
        state_dir.chmod(0o700)
        log.warning(
            "state.tightened",
            state_dir=str(state_dir),
            was=mode,
            note="the state directory was readable by others; it is 0700 now",
        )
        return
    log.warning(
        "state.exposed",
        state_dir=str(state_dir),
        mode=mode,
        owner=found.st_uid,
        note=f"the group or others can enter it; chmod 0700 {state_dir} (its owner may)",
    )
