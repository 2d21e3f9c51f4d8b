"""How a new relay connection authenticates: a password (PLAIN or LOGIN) or XOAUTH2."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import aiosmtplib

if TYPE_CHECKING:  # only XOAUTH2 relays load Authlib (see smtp.factory.make_auth)
    from kanidm_mail_sender.smtp.oauth import TokenSource

__all__ = ["PASSWORD_HINT", "PasswordAuth", "SmtpAuth", "XOAuth2Auth"]

PASSWORD_HINT = "check mail_username and mail_password"  # noqa: S105 - advice, not a secret


class SmtpAuth(Protocol):
    """One way to authenticate; raises aiosmtplib's errors or a RelayError of ours."""

    #: What to check when the relay refuses us, for the operator.
    hint: str

    async def authenticate(self, conn: aiosmtplib.SMTP) -> None: ...

    def secrets(self) -> tuple[str, ...]: ...

    def describe(self) -> str: ...

    async def aclose(self) -> None: ...


class PasswordAuth:
    """One mechanism, no fallback, as upstream: PLAIN if offered, else LOGIN."""

    hint = PASSWORD_HINT

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    async def authenticate(self, conn: aiosmtplib.SMTP) -> None:
        """AUTH PLAIN or AUTH LOGIN with the configured password."""
        methods = conn.server_auth_methods
        if "plain" in methods:
            await conn.auth_plain(self._username, self._password)
        elif "login" in methods:
            await conn.auth_login(self._username, self._password)
        else:
            raise aiosmtplib.SMTPException("the relay offers neither AUTH PLAIN nor AUTH LOGIN")

    def secrets(self) -> tuple[str, ...]:
        """The strings a relay could echo back from our AUTH exchange."""
        user, password = self._username, self._password
        return (password, f"\0{user}\0{password}", f"{user}\0{password}")

    def describe(self) -> str:
        """For ``--check``."""
        return f"authenticated as {self._username} (password)"

    async def aclose(self) -> None:
        """Nothing to release."""


class XOAuth2Auth:
    """SASL XOAUTH2 with the shared token; a refused token is renewed once and retried."""

    hint = (
        "check that the mailbox in mail_username may send with this application's token "
        "(Microsoft: SMTP.SendAsApp and the Exchange service principal; Google: delegation)"
    )

    def __init__(self, username: str, tokens: TokenSource) -> None:
        self._username = username
        self.tokens = tokens

    async def authenticate(self, conn: aiosmtplib.SMTP) -> None:
        """AUTH XOAUTH2; after the error challenge and 535, once more with a new token."""
        if "xoauth2" not in conn.server_auth_methods:
            raise aiosmtplib.SMTPException("the relay does not offer AUTH XOAUTH2")
        token = await self.tokens.current()
        try:
            await conn.auth_xoauth2(self._username, token.value)
        except aiosmtplib.SMTPAuthenticationError:
            # Revoked or expired early at the provider: the relay knows better than our clock.
            fresh = await self.tokens.renew(token)
            await conn.auth_xoauth2(self._username, fresh.value)

    def secrets(self) -> tuple[str, ...]:
        """The configured secrets and the recent tokens."""
        return self.tokens.secrets()

    def describe(self) -> str:
        """For ``--check``."""
        return f"authenticated as {self._username} (XOAUTH2)"

    async def aclose(self) -> None:
        """Stop the token renewal and close the token endpoint's client."""
        await self.tokens.aclose()
