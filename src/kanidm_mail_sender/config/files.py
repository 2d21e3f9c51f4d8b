"""Reading config and secret files safely: regular files only, bounded, UTF-8 TOML, and each
secret from exactly one source (the key, ``<key>_file`` or a systemd credential)."""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kanidm_mail_sender.errors import ConfigError

__all__ = ["read_regular_file", "read_toml", "resolve_secrets"]


_MAX_FILE = 1 << 20  # a config or secret file is a few hundred bytes


def read_regular_file(path: Path, what: str = "") -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most 1 MiB.

    A FIFO or a device given by mistake would otherwise block the start forever (or feed
    it without end); it is opened without blocking and refused after one ``fstat``.
    """
    prefix = f"{what}: " if what else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"{prefix}{path}: file not found; create it or pass its path") from None
    except PermissionError:
        uid = os.geteuid()
        raise ConfigError(
            f"{prefix}{path}: cannot be read by uid {uid} (permission denied); give it to that "
            f"user (chown {uid} and chmod 0400; in the image uid 10001), or in Kubernetes mount "
            "it from a Secret with fsGroup 10001 and defaultMode 0440"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{prefix}{path}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(
            f"{prefix}{path}: is not a regular file (a directory, FIFO or device?); "
            "give the path of the file itself"
        )
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(_MAX_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"{prefix}{path}: cannot be read ({exc.strerror})") from None
    if len(data) > _MAX_FILE:
        raise ConfigError(f"{prefix}{path}: is larger than 1 MiB; this is not a config file")
    return data


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table in the config file at ``path`` (refused as ``read_regular_file`` does)."""
    raw = read_regular_file(path)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: is not valid TOML: {exc}") from None


_SECRETS = tuple(
    (key, f"{key}_file")
    for key in (
        "token",
        "mail_password",
        "mail_oauth2_client_secret",
        "mail_oauth2_refresh_token",
        "mail_oauth2_service_account",
    )
)


def resolve_secrets(
    path: Path, data: dict[str, Any], environ: Mapping[str, str], exposed: list[str]
) -> dict[str, Any]:
    """Take each secret from exactly one of: the key, ``<key>_file``, or a systemd credential.
    A ``*_file`` that every user may read is named in ``exposed`` (systemd's credentials are
    private by construction)."""
    data = dict(data)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    for key, file_key in _SECRETS:
        sources: list[tuple[str, Path | None]] = []
        if key in data:
            sources.append((f"key '{key}'", None))
        if file_key in data:
            value = data.pop(file_key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: key '{file_key}': must be the path of a file")
            sources.append((f"key '{file_key}'", Path(value)))
        if credentials and (Path(credentials) / key).is_file():
            sources.append((f"systemd credential '{key}'", Path(credentials) / key))
        if len(sources) > 1:
            names = " and ".join(name for name, _ in sources)
            raise ConfigError(f"{path}: '{key}' is given by {names}; keep exactly one of them")
        if sources and sources[0][1] is not None:
            secret_path = sources[0][1]
            raw = read_regular_file(secret_path, f"{path}: {sources[0][0]}")
            if sources[0][0].startswith("key ") and _readable_by_all(secret_path):
                exposed.append(
                    f"{path}: {sources[0][0]}: {secret_path} holds a secret but is readable by "
                    "all users; chmod o-rwx it"
                )
            try:
                data[key] = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(
                    f"{path}: {sources[0][0]}: {secret_path} is not UTF-8 text"
                ) from None
    return data


def _readable_by_all(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False  # read just now; a race is not worth a warning
