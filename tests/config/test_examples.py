"""Every relay example loads as the daemon would load it, with its secrets in files."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from kanidm_mail_sender.config.loading import load_mail_config
from kanidm_mail_sender.config.oauth import Grant
from kanidm_mail_sender.sandbox.oauth_server import make_service_account
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples" / "relays"

# file: (relay as written, implicit TLS, grant or None for a password or no AUTH)
EXPECTED = {
    "microsoft-365.toml": ("smtp://smtp.office365.com:587", False, Grant.CLIENT_CREDENTIALS),
    "google-workspace.toml": ("smtps://smtp.gmail.com:465", True, Grant.JWT_BEARER),
    "google-refresh-token.toml": ("smtps://smtp.gmail.com:465", True, Grant.REFRESH_TOKEN),
    "amazon-ses.toml": ("smtp://email-smtp.eu-west-1.amazonaws.com:587", False, None),
    "postfix-local.toml": ("smtp://mail.internal.example.com:587", False, None),
    "password-provider.toml": ("smtps://smtp.fastmail.com:465", True, None),
}


def test_every_example_is_listed() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_loads(name: str, tmp_path: Path) -> None:
    data = tomllib.loads((EXAMPLES / name).read_text())
    # The secret files an operator would create, at paths of this test's own.
    for key, value in list(data.items()):
        if key.endswith("_file") or key == "mail_ca_path":
            local = tmp_path / Path(value).name
            if key == "mail_oauth2_service_account_file":
                make_service_account(local)
            else:
                local.write_text(f"secret-of-{key}\n")
            if key.endswith("_file"):
                local.chmod(0o600)  # as the README asks: readable by every user, it warns
            data[key] = str(local)
    path = tmp_path / "mail-sender"
    path.write_text(tomli_w.dumps(data))
    loaded = load_mail_config(path, environ={})
    assert loaded.warnings == []
    config = loaded.config
    url, implicit, grant = EXPECTED[name]
    assert config.relay.describe() == url
    assert config.relay.implicit_tls is implicit
    oauth2 = config.oauth2()
    assert (oauth2.grant if oauth2 else None) is grant
    if oauth2 is not None:
        assert oauth2.username == config.mail_username
        assert oauth2.token_url.startswith("https://")
        assert oauth2.scope
    assert ("mail_rate_limit" in data) == bool(config.mail_rate_limit)
