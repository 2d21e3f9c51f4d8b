"""Start-up safety checks as pure functions over ids and file metadata."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kanidm_mail_sender.errors import ConfigError, PreflightError

__all__ = ["Identity", "check_config_file", "check_not_root"]


@dataclass(frozen=True)
class Identity:
    """The ids the process runs with."""

    uid: int
    euid: int
    gid: int
    egid: int

    @classmethod
    def current(cls) -> Identity:
        """Read the running process's ids."""
        return cls(os.getuid(), os.geteuid(), os.getgid(), os.getegid())


def check_not_root(ids: Identity, *, skip: bool) -> list[str]:
    """Raise PreflightError when any id is 0, unless ``skip``; then return a warning instead."""
    if 0 not in (ids.uid, ids.euid, ids.gid, ids.egid):
        return []
    if skip:
        return ["running as root because --skip-root-check was given; this is not recommended"]
    raise PreflightError(
        "refusing to run as root (uid, euid, gid or egid is 0); run as an unprivileged user, "
        "for example with systemd's DynamicUser=yes or docker run --user"
    )


def check_config_file(path: Path, ids: Identity, *, holds_secrets: bool) -> list[str]:
    """The file must exist; warn when we could rewrite it, or others could read its secrets."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file missing; create it or pass its path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot inspect it ({exc.strerror})") from None
    warnings = []
    mode = info.st_mode
    writable = (
        (info.st_uid == ids.euid and mode & stat.S_IWUSR)
        or (info.st_gid == ids.egid and mode & stat.S_IWGRP)
        or mode & stat.S_IWOTH
    )
    if writable:
        warnings.append(
            f"{path}: the service can modify its own config; make it read-only for this user "
            "(for example owned by root, mode 0640 with the service's group)"
        )
    if holds_secrets and mode & (stat.S_IROTH | stat.S_IWOTH):
        warnings.append(f"{path}: holds secrets but is readable by all users; chmod o-rwx it")
    elif holds_secrets and mode & stat.S_IRGRP and info.st_gid != ids.egid:
        warnings.append(
            f"{path}: holds secrets and is readable by a group the service is not in; "
            "restrict it to the service's group"
        )
    return warnings
