"""Writes a matching client config and mail-sender config for the stand-ins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn

__all__ = ["write_configs"]


def write_configs(
    directory: Path,
    *,
    kanidm_url: str,
    token: str,
    relay: SmtpStandIn,
    certs: Certs,
    **overrides: Any,
) -> tuple[Path, Path]:
    """Write ``client-config.toml`` and ``mail-sender.toml``; ``overrides`` replace or add
    mail-sender keys (a value of None removes the key)."""
    directory.mkdir(parents=True, exist_ok=True)
    client = directory / "client-config.toml"
    mail_path = directory / "mail-sender.toml"
    for old in (client, mail_path):
        old.unlink(missing_ok=True)  # read-only from an earlier call
    client.write_text(
        tomli_w.dumps({"uri": kanidm_url, "ca_path": str(certs.ca_path), "connect_timeout": 5})
    )
    mail: dict[str, Any] = {
        "token": token,
        "schedule": "* * * * * *",
        "instance_display_name": "Kanidm Sandbox",
        "instance_url": "https://idm.example.com",
        "mail_from_address": "idm@example.com",
        "mail_reply_to_address": "support@example.com",
        "mail_relay": relay.url,
        "mail_ca_path": str(certs.ca_path),
        "state_dir": str(directory / "state"),
        "mail_timeout_seconds": 10,
        "http_timeout_seconds": 10,
    }
    if relay.auth is not None:
        mail["mail_username"], mail["mail_password"] = relay.auth
    for key, value in overrides.items():
        if value is None:
            mail.pop(key, None)
        else:
            mail[key] = value
    mail_path.write_text(tomli_w.dumps(mail))
    for path in (client, mail_path):
        path.chmod(0o400)
    return client, mail_path
