"""The relay pool and its authentication, built from the mail-sender config."""

from __future__ import annotations

import ssl

from kanidm_mail_sender.config.settings import MailSenderConfig
from kanidm_mail_sender.smtp.auth import PasswordAuth, SmtpAuth, XOAuth2Auth
from kanidm_mail_sender.smtp.relay import SmtpRelay, build_tls_context

__all__ = ["make_auth", "make_relay"]


def make_auth(config: MailSenderConfig, tls_context: ssl.SSLContext) -> SmtpAuth | None:
    """How relay connections authenticate: XOAUTH2, a password, or not at all."""
    oauth2 = config.oauth2()
    if oauth2 is not None:
        # Imported here: Authlib and its JOSE stack cost about 10 MB and 0.2 s at start,
        # which a relay with a password (most of them) should not pay.
        from kanidm_mail_sender.smtp.oauth import TokenSource

        # The token endpoint is trusted as the relay is: system store plus mail_ca_path.
        tokens = TokenSource(oauth2, tls_context=tls_context, timeout=config.http_timeout_seconds)
        return XOAuth2Auth(oauth2.username, tokens)
    credentials = config.credentials()
    return PasswordAuth(*credentials) if credentials is not None else None


def make_relay(config: MailSenderConfig) -> SmtpRelay:
    """The SMTP relay pool described by the config."""
    tls_context = build_tls_context(config.mail_ca_path)
    return SmtpRelay(
        config.relay,
        tls_context=tls_context,
        auth=make_auth(config, tls_context),
        helo_name=config.helo_name(),
        connect_timeout=config.mail_connect_timeout_seconds,
        command_timeout=config.mail_timeout_seconds,
        max_connections=config.mail_max_connections,
    )
