"""Where the state directory is, as the config and systemd name it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kanidm_mail_sender.config.settings import DEFAULT_STATE_DIR, MailSenderConfig

__all__ = ["resolve_state_dir", "state_dir_named", "systemd_state_dir"]


def resolve_state_dir(config: MailSenderConfig, environ: Mapping[str, str]) -> Path:
    """``state_dir``, else systemd's ``$STATE_DIRECTORY`` (first entry), else the default."""
    if config.state_dir is not None:
        return config.state_dir
    return systemd_state_dir(environ) or DEFAULT_STATE_DIR


def systemd_state_dir(environ: Mapping[str, str]) -> Path | None:
    """The first entry of systemd's ``$STATE_DIRECTORY``, if it is set."""
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else None


def state_dir_named(config: MailSenderConfig, environ: Mapping[str, str]) -> bool:
    """Whether the operator named the state directory (``state_dir`` or systemd's
    ``$STATE_DIRECTORY``) rather than leaving it to the default."""
    return config.state_dir is not None or systemd_state_dir(environ) is not None
