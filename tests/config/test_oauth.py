"""OAuth 2.0 keys of the mail-sender config: each grant and provider preset, and bad keys named."""

from __future__ import annotations

from typing import Any

import pytest

from kanidm_mail_sender.config.oauth import Grant, oauth2_settings

MAILBOX = "idm@example.com"


_OAUTH_BASE = {"mail_username": MAILBOX}


@pytest.mark.parametrize(
    ("keys", "grant", "url", "scope"),
    [
        (
            {
                "mail_oauth2_provider": "microsoft",
                "mail_oauth2_tenant": "contoso.onmicrosoft.com",
                "mail_oauth2_client_id": "app",
                "mail_oauth2_client_secret": "s",
            },
            Grant.CLIENT_CREDENTIALS,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
            "https://outlook.office365.com/.default",
        ),
        (
            {
                "mail_oauth2_provider": "microsoft",
                "mail_oauth2_tenant": "1f2e",
                "mail_oauth2_client_id": "app",
                "mail_oauth2_refresh_token": "r",
            },
            Grant.REFRESH_TOKEN,
            "https://login.microsoftonline.com/1f2e/oauth2/v2.0/token",
            "https://outlook.office.com/SMTP.Send offline_access",
        ),
        (
            {
                "mail_oauth2_provider": "google",
                "mail_oauth2_client_id": "app",
                "mail_oauth2_client_secret": "s",
                "mail_oauth2_refresh_token": "r",
            },
            Grant.REFRESH_TOKEN,
            "https://oauth2.googleapis.com/token",
            "https://mail.google.com/",
        ),
        (
            {
                "mail_oauth2_token_url": "https://auth.example.net/token",
                "mail_oauth2_scope": "smtp",
                "mail_oauth2_client_id": "app",
                "mail_oauth2_client_secret": "s",
            },
            Grant.CLIENT_CREDENTIALS,
            "https://auth.example.net/token",
            "smtp",
        ),
    ],
)
def test_grants_and_presets(
    keys: dict[str, str], grant: Grant, url: str, scope: str | None
) -> None:
    secrets = {
        key: f"{value}-very-secret" if "secret" in key or "refresh" in key else value
        for key, value in keys.items()
    }
    settings = oauth2_settings({**_OAUTH_BASE, **secrets})
    assert settings is not None
    assert (settings.grant, settings.token_url, settings.scope) == (grant, url, scope)
    assert "very-secret" not in repr(settings)
    assert all(secret.endswith("-very-secret") for secret in settings.secrets())


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"mail_oauth2_provider": "google"}, "mail_oauth2_client_id' is missing"),
        (
            {"mail_oauth2_provider": "google", "mail_oauth2_client_id": "a"},
            "no grant is configured",
        ),
        (
            {
                "mail_oauth2_provider": "microsoft",
                "mail_oauth2_client_id": "a",
                "mail_oauth2_client_secret": "s",
            },
            "mail_oauth2_tenant",
        ),
        ({"mail_oauth2_client_id": "a", "mail_oauth2_client_secret": "s"}, "token_url"),
        (
            {
                "mail_oauth2_token_url": "http://plain.example/token",
                "mail_oauth2_client_id": "a",
                "mail_oauth2_client_secret": "s",
            },
            "https URL",
        ),
        (
            {
                "mail_oauth2_provider": "google",
                "mail_oauth2_client_id": "a",
                "mail_oauth2_refresh_token": "r",
                "mail_oauth2_service_account": "{}",
            },
            "exactly one grant",
        ),
        (
            {"mail_oauth2_provider": "google", "mail_oauth2_service_account": '{"type": "x"}'},
            "service_account",
        ),
        (
            {
                "mail_oauth2_provider": "google",
                "mail_oauth2_client_id": "a",
                "mail_oauth2_client_secret": "s",
                "mail_password": "pw",
            },
            "mail_password",
        ),
        (
            {
                "mail_username": None,
                "mail_oauth2_provider": "google",
                "mail_oauth2_client_id": "a",
                "mail_oauth2_client_secret": "s",
            },
            "mailbox",
        ),
        ({"mail_oauth2_provider": "yahoo"}, "'microsoft' or 'google'"),
    ],
)
def test_bad_oauth_keys_are_named(keys: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        oauth2_settings({**_OAUTH_BASE, **keys})
