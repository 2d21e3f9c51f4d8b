"""Both config files, checked and loaded together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kanidm_mail_sender.config.preflight import Identity, check_config_file
from kanidm_mail_sender.config.settings import (
    ClientConfig,
    Loaded,
    MailSenderConfig,
    load_client_config,
    load_mail_config,
)

__all__ = ["Configs", "load_configs"]


@dataclass(frozen=True)
class Configs:
    """Both validated config files."""

    mail: MailSenderConfig
    client: ClientConfig


def load_configs(
    client_path: Path, mail_path: Path, *, environ: Mapping[str, str], ids: Identity
) -> tuple[Configs, list[str]]:
    """Check and load both files; returns the configs and every warning found."""
    warnings = check_config_file(client_path, ids, holds_secrets=False)
    warnings += check_config_file(mail_path, ids, holds_secrets=True)
    client: Loaded[ClientConfig] = load_client_config(client_path)
    mail: Loaded[MailSenderConfig] = load_mail_config(mail_path, environ=environ)
    return Configs(mail.config, client.config), warnings + client.warnings + mail.warnings
