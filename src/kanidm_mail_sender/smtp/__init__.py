"""The SMTP relay: a pool of TLS connections, pipelined transactions on our own session,
AUTH (password or XOAUTH2 with OAuth 2.0 tokens), and the mapping of its failures to ours."""

from kanidm_mail_sender.smtp.auth import PasswordAuth, SmtpAuth, XOAuth2Auth
from kanidm_mail_sender.smtp.factory import make_auth, make_relay
from kanidm_mail_sender.smtp.relay import SmtpRelay, build_tls_context

__all__ = [
    "PasswordAuth",
    "SmtpAuth",
    "SmtpRelay",
    "XOAuth2Auth",
    "build_tls_context",
    "make_auth",
    "make_relay",
]
