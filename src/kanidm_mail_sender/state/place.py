"""Where the state directory is: the one the operator named, else the default, else (when
this user cannot write the default, as in kaniop's pod: uid 65534, no volume) a private
directory under the temporary directory that lasts as long as the container.

A directory the operator named (``state_dir``, systemd's ``$STATE_DIRECTORY``) is never
replaced: it was asked for, and a journal elsewhere would hide a mistake.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from kanidm_mail_sender.errors import StateError

__all__ = ["StatePlace", "ephemeral_dir", "find_state_dir", "settle_state_dir", "writable"]


class StatePlace(NamedTuple):
    """The directory to use, and the one warning to log about it (if any)."""

    path: Path
    warning: str | None = None


def ephemeral_dir(temp_root: Path | None = None) -> Path:
    """The fallback for this user: ``$TMPDIR/kanidm-mail-sender-<uid>``, one per uid so that
    the lock still keeps two instances of one user apart."""
    root = temp_root or Path(tempfile.gettempdir())
    return root / f"kanidm-mail-sender-{os.geteuid()}"


def settle_state_dir(
    path: Path,
    *,
    named: bool,
    environ: Mapping[str, str],
    temp_root: Path | None = None,
) -> StatePlace:
    """The directory the daemon will lock (created private if it falls back)."""
    if named or writable(path):
        return StatePlace(path, _not_a_volume(path, environ))
    fallback = ephemeral_dir(temp_root)
    _make_private(fallback)
    return StatePlace(
        fallback,
        f"state directory {path} is not writable by uid {os.geteuid()}; the journal is kept in "
        f"{fallback} instead, which lasts only as long as this container: after a restart, a "
        "mail the relay accepted but Kanidm had not yet marked sent can go out once more, and "
        "backoffs, rejections and mail_rate_limit's counts start empty. Mount a volume at "
        f"{path} writable by this user (or set state_dir) to keep them",
    )


def find_state_dir(path: Path, *, named: bool, temp_root: Path | None = None) -> Path:
    """The directory a reader (operator commands, the probe) should look in: the daemon's
    fallback when the default holds nothing and the fallback does."""
    if named or _exists(path / "lock"):
        return path
    fallback = ephemeral_dir(temp_root)
    return fallback if _exists(fallback / "lock") else path


def writable(path: Path) -> bool:
    """Whether this user can use ``path``, or create it, without creating anything now."""
    probe = path
    try:
        while not probe.exists():
            if probe.parent == probe:
                return False
            probe = probe.parent
    except PermissionError:
        return False  # a parent this user cannot enter
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _exists(path: Path) -> bool:
    """``path.exists()``, false where this user may not look: the image's default directory
    is 0700 for its own uid, and kaniop's uid 65534 must look past it, not fail."""
    try:
        return path.exists()
    except PermissionError:
        return False


def _make_private(directory: Path) -> None:
    """Create ``directory`` 0700, or accept it only if it is ours and not a link: in a shared
    temporary directory another user could have made it first."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        found = directory.lstat()
    except OSError as exc:
        raise StateError(
            f"state directory {directory} cannot be created ({exc.strerror}); set state_dir to "
            "a directory this user owns, or mount a volume at the default"
        ) from None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
        raise StateError(
            f"state directory {directory} exists but is not a directory of uid {os.geteuid()} "
            "(another user may have made it); remove it, or set state_dir"
        )
    if found.st_mode & 0o077:
        directory.chmod(0o700)


def _not_a_volume(path: Path, environ: Mapping[str, str]) -> str | None:
    """In a Kubernetes pod, a state directory that is no mount point lives in the container's
    own layer: it goes with the pod (the image's VOLUME is ignored there)."""
    if "KUBERNETES_SERVICE_HOST" not in environ or os.path.ismount(path):
        return None
    return (
        f"state directory {path} is not a volume: the journal lasts only as long as this pod "
        "(a mail accepted but not yet marked sent can go out once more after a restart); mount "
        f"an emptyDir or a PersistentVolumeClaim at {path} to keep it"
    )
