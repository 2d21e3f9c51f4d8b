"""Which OAuth 2.0 grant the ``mail_oauth2_*`` keys describe, with the provider presets (pure).

Exactly one grant: a refresh token, a Google service-account key (RFC 7523 JWT bearer, for
domain-wide delegation), or else client credentials (client id and secret). Presets fill the
token URL and scope for Microsoft 365 and Google; explicit keys win over them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["KEYS", "Grant", "OAuth2Settings", "ServiceAccount", "oauth2_settings"]

KEYS = (
    "mail_oauth2_provider",
    "mail_oauth2_tenant",
    "mail_oauth2_token_url",
    "mail_oauth2_scope",
    "mail_oauth2_client_id",
    "mail_oauth2_client_secret",
    "mail_oauth2_refresh_token",
    "mail_oauth2_service_account",
)


class Grant(enum.Enum):
    """How the access token is obtained."""

    CLIENT_CREDENTIALS = "client credentials"
    REFRESH_TOKEN = "refresh token"  # noqa: S105 - a grant's name, not a secret
    JWT_BEARER = "service account (JWT bearer)"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a Google service-account key file that sign the assertion."""

    client_email: str
    private_key: str = field(repr=False)
    private_key_id: str | None = None
    token_uri: str | None = None


@dataclass(frozen=True, slots=True)
class OAuth2Settings:
    """Everything needed to obtain tokens for the XOAUTH2 mailbox ``username``."""

    grant: Grant
    token_url: str
    scope: str | None
    username: str
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    service_account: ServiceAccount | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        """The configured secrets, for redaction."""
        found = [self.client_secret, self.refresh_token]
        if self.service_account is not None:
            found.append(self.service_account.private_key)
        return tuple(secret for secret in found if secret)


# Public endpoints, not secrets (ruff's S105 sees "TOKEN" in the names).
_MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"  # noqa: S105
_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105
_SCOPES = {
    # An application (client credentials) asks for the resource's ".default" permissions
    # (SMTP.SendAsApp); a user's refresh token asks for the delegated SMTP.Send.
    ("microsoft", Grant.CLIENT_CREDENTIALS): "https://outlook.office365.com/.default",
    ("microsoft", Grant.REFRESH_TOKEN): "https://outlook.office.com/SMTP.Send offline_access",
    ("google", Grant.CLIENT_CREDENTIALS): "https://mail.google.com/",
    ("google", Grant.REFRESH_TOKEN): "https://mail.google.com/",
    ("google", Grant.JWT_BEARER): "https://mail.google.com/",
}


def parse_service_account(text: str) -> ServiceAccount:
    """A Google service-account JSON key; raises ValueError saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("is not a JSON service-account key file") from None
    if not isinstance(data, dict) or data.get("type") != "service_account":
        raise ValueError('is not a service-account key (its "type" must be "service_account")')
    email, key = data.get("client_email"), data.get("private_key")
    if not isinstance(email, str) or not email or not isinstance(key, str):
        raise ValueError('lacks "client_email" or "private_key"; download a new JSON key')
    # Imported here: only a service-account key needs cryptography (megabytes at start).
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        loaded = load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError('has a "private_key" that is not an unencrypted PEM key') from None
    if not isinstance(loaded, RSAPrivateKey):
        raise ValueError('has a "private_key" that is not an RSA key (RS256 is required)')
    key_id, token_uri = data.get("private_key_id"), data.get("token_uri")
    return ServiceAccount(
        client_email=email,
        private_key=key,
        private_key_id=key_id if isinstance(key_id, str) else None,
        token_uri=token_uri if isinstance(token_uri, str) else None,
    )


def _https(url: str, key: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"'{key}' must be an https URL of the token endpoint")
    return url


def _grant(keys: Mapping[str, Any]) -> Grant:
    refresh = keys.get("mail_oauth2_refresh_token") is not None
    account = keys.get("mail_oauth2_service_account") is not None
    if refresh and account:
        raise ValueError(
            "both 'mail_oauth2_refresh_token' and 'mail_oauth2_service_account_file' are set; "
            "configure exactly one grant"
        )
    if account:
        for key in ("mail_oauth2_client_id", "mail_oauth2_client_secret"):
            if keys.get(key) is not None:
                raise ValueError(
                    f"'{key}' is set beside 'mail_oauth2_service_account_file'; the key file "
                    "names its own client: remove it"
                )
        return Grant.JWT_BEARER
    if not keys.get("mail_oauth2_client_id"):
        raise ValueError(
            "'mail_oauth2_client_id' is missing; give the application's client id, or "
            "'mail_oauth2_service_account_file' for a Google service account"
        )
    if refresh:
        return Grant.REFRESH_TOKEN
    if keys.get("mail_oauth2_client_secret") is None:
        raise ValueError(
            "no grant is configured; set 'mail_oauth2_client_secret' (client credentials), "
            "'mail_oauth2_refresh_token', or 'mail_oauth2_service_account_file'"
        )
    return Grant.CLIENT_CREDENTIALS


def _token_url(
    provider: str | None, keys: Mapping[str, Any], account: ServiceAccount | None
) -> str:
    explicit = keys.get("mail_oauth2_token_url")
    if explicit:
        return _https(explicit, "mail_oauth2_token_url")
    if provider == "microsoft":
        tenant = keys.get("mail_oauth2_tenant")
        if not tenant or not all(c.isalnum() or c in "-." for c in tenant):
            raise ValueError(
                "'mail_oauth2_tenant' is missing or invalid; give the directory (tenant) id "
                "or domain of the Microsoft 365 organisation"
            )
        return _MICROSOFT_TOKEN_URL.format(tenant=tenant)
    if provider == "google":
        if account is not None and account.token_uri:
            return _https(account.token_uri, "mail_oauth2_service_account_file: token_uri")
        return _GOOGLE_TOKEN_URL
    raise ValueError(
        "'mail_oauth2_token_url' is missing; give it, or set mail_oauth2_provider to "
        "'microsoft' or 'google'"
    )


def oauth2_settings(keys: Mapping[str, Any]) -> OAuth2Settings | None:
    """The OAuth settings the keys describe, or None when no ``mail_oauth2_*`` key is set.

    ``mail_oauth2_service_account`` holds the key file's text (read by the loader);
    raises ValueError naming the keys at fault.
    """
    if all(keys.get(key) is None for key in KEYS):
        return None
    if keys.get("mail_password") is not None:
        raise ValueError(
            "'mail_password' is set beside mail_oauth2_* keys; XOAUTH2 uses a token, not a "
            "password: remove one of them"
        )
    username = keys.get("mail_username")
    if not username:
        raise ValueError("'mail_username' is missing; XOAUTH2 needs the mailbox that sends")
    provider = keys.get("mail_oauth2_provider")
    if provider is not None and provider not in ("microsoft", "google"):
        raise ValueError("'mail_oauth2_provider' must be 'microsoft' or 'google', or absent")
    grant = _grant(keys)
    if provider == "microsoft" and grant is Grant.JWT_BEARER:
        raise ValueError("a service-account key is Google's; mail_oauth2_provider is 'microsoft'")
    account_text = keys.get("mail_oauth2_service_account")
    account = None
    if account_text is not None:
        try:
            account = parse_service_account(account_text)
        except ValueError as exc:
            raise ValueError(f"'mail_oauth2_service_account_file' {exc}") from None
    scope = keys.get("mail_oauth2_scope") or _SCOPES.get((provider or "", grant))
    return OAuth2Settings(
        grant=grant,
        token_url=_token_url(provider, keys, account),
        scope=scope,
        username=username,
        client_id=keys.get("mail_oauth2_client_id"),
        client_secret=keys.get("mail_oauth2_client_secret"),
        refresh_token=keys.get("mail_oauth2_refresh_token"),
        service_account=account,
    )
