"""The SMTP relay: a small pool of TLS connections and the mapping of SMTP failures.

``smtp://`` always requires STARTTLS and ``smtps://`` always uses implicit TLS; aiosmtplib's
default (``start_tls=None``) would silently fall back to clear text, so it is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from pathlib import Path

import aiosmtplib

from kanidm_mail_sender.config import RelayEndpoint
from kanidm_mail_sender.errors import (
    ConfigError,
    DeliveryDeferred,
    DeliveryRejected,
    RelayError,
    RelayMisconfigured,
)
from kanidm_mail_sender.mail import Envelope

__all__ = ["SmtpRelay", "build_tls_context", "classify_smtp_error"]

_HEALTH_CHECK_AFTER = 2.0  # seconds idle before a pooled connection is NOOP-checked


def build_tls_context(ca_path: Path | None) -> ssl.SSLContext:
    """The one TLS context for every relay connection: system trust store, plus ``ca_path``."""
    context = ssl.create_default_context()
    # Names are checked against subjectAltName only, as upstream's rustls/webpki does.
    context.hostname_checks_common_name = False
    if ca_path is not None:
        try:
            context.load_verify_locations(cafile=str(ca_path))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"mail_ca_path {ca_path}: cannot load a PEM CA certificate from it ({exc})"
            ) from None
    return context


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def classify_smtp_error(exc: BaseException) -> RelayError:
    """Map an aiosmtplib (or ssl/OS) exception to deferred, rejected or relay-wide."""
    tls = _tls_failure(exc)
    if tls is not None:
        return RelayMisconfigured(f"TLS with the relay failed: {tls}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return RelayMisconfigured(
            f"the relay refused our credentials ({exc.code} {exc.message}); "
            "check mail_username and mail_password",
            code=exc.code,
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        code = first.code if first else 550
        text = f"{code} {first.message if first else 'recipient refused'}"
        cls = DeliveryRejected if code >= 500 else DeliveryDeferred
        return cls(f"recipient refused: {text}", code=code)
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return DeliveryDeferred(f"the relay refused the connection: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if 500 <= exc.code < 600:
            return DeliveryRejected(f"the relay refused the mail: {exc.code} {exc.message}",
                                    code=exc.code)
        return DeliveryDeferred(f"the relay deferred the mail: {exc.code} {exc.message}",
                                code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return DeliveryDeferred(f"the relay closed the connection: {exc}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return DeliveryDeferred(f"the relay did not answer in time: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return DeliveryDeferred(f"cannot connect to the relay: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered, no usable mechanism: the relay does not fit our config.
        return RelayMisconfigured(f"the relay cannot be used as configured: {exc}")
    return DeliveryDeferred(f"unexpected error talking to the relay: {exc!r}")


async def _transaction(conn: aiosmtplib.SMTP, envelope: Envelope) -> str:
    """MAIL, RCPT and DATA for one recipient; returns the relay's final reply.

    This is aiosmtplib's ``sendmail`` without its four re-parses of addresses we already
    checked (a tenth of the CPU per mail), and with SMTPUTF8 when an address needs it.
    """
    sender, recipient = envelope.sender, envelope.recipient
    options = [b"SIZE=%d" % len(envelope.data)] if conn.supports_extension("size") else []
    if not (sender.isascii() and recipient.isascii()):
        if not conn.supports_extension("smtputf8"):
            raise DeliveryRejected(
                f"{recipient if not recipient.isascii() else sender} needs SMTPUTF8, "
                "which the relay does not offer")
        options.append(b"SMTPUTF8")
    try:
        reply = await conn.execute_command(b"MAIL", b"FROM:<%b>" % sender.encode(), *options)
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await conn.execute_command(b"RCPT", b"TO:<%b>" % recipient.encode())
        if reply.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)])
        reply = await conn.data(envelope.data)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await conn.rset()  # leave the pooled connection ready for the next mail
        raise
    return reply.message


class SmtpRelay:
    """Sends envelopes over at most ``max_connections`` reused TLS connections."""

    def __init__(
        self,
        endpoint: RelayEndpoint,
        *,
        tls_context: ssl.SSLContext,
        credentials: tuple[str, str] | None = None,
        helo_name: str | None = None,
        connect_timeout: float = 15,
        command_timeout: float = 60,
        max_connections: int = 4,
        idle_timeout: float = 60,
    ) -> None:
        self.endpoint = endpoint
        self._tls = tls_context
        self._credentials = credentials
        self._helo = helo_name or socket.gethostname()
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._idle_timeout = idle_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self.connections_opened = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        conn = aiosmtplib.SMTP(
            hostname=self.endpoint.host,
            port=self.endpoint.port,
            use_tls=self.endpoint.implicit_tls,
            start_tls=not self.endpoint.implicit_tls,
            tls_context=self._tls,
            local_hostname=self._helo,
            timeout=self._command_timeout,
        )
        try:
            await conn.connect(timeout=self._connect_timeout)
            if conn.is_ehlo_or_helo_needed:  # after STARTTLS, and before reading extensions
                await conn.ehlo()
            if self._credentials is not None:
                user, password = self._credentials
                # One mechanism, no fallback, as upstream: PLAIN if offered, else LOGIN.
                if "plain" in conn.server_auth_methods:
                    await conn.auth_plain(user, password)
                elif "login" in conn.server_auth_methods:
                    await conn.auth_login(user, password)
                else:
                    raise aiosmtplib.SMTPException(
                        "the relay offers neither AUTH PLAIN nor AUTH LOGIN"
                    )
        except BaseException:
            conn.close()
            raise
        self.connections_opened += 1
        return conn

    async def _acquire(self) -> aiosmtplib.SMTP:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.is_connected or now - since > self._idle_timeout:
                conn.close()
                continue
            if now - since > _HEALTH_CHECK_AFTER:
                try:
                    await conn.noop()
                except (aiosmtplib.SMTPException, OSError):
                    conn.close()
                    continue
            return conn
        return await self._connect()

    async def send(self, envelope: Envelope) -> str:
        """Relay one envelope; returns the relay's reply, or raises a RelayError subclass."""
        async with self._slots:
            conn: aiosmtplib.SMTP | None = None
            try:
                conn = await self._acquire()
                reply = await _transaction(conn, envelope)
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()
                raise
            except RelayError:
                if conn is not None:  # refused before any command: the connection is fine
                    self._idle.append((conn, time.monotonic()))
                raise
            except Exception as exc:
                if conn is not None:
                    conn.close()
                raise classify_smtp_error(exc) from exc
            self._idle.append((conn, time.monotonic()))
            return reply

    async def check(self) -> None:
        """Connect, negotiate TLS and authenticate, then hang up without sending."""
        try:
            conn = await self._connect()
        except Exception as exc:
            raise classify_smtp_error(exc) from exc
        try:
            await conn.quit()
        except (aiosmtplib.SMTPException, OSError):
            conn.close()

    async def close(self) -> None:
        """Say QUIT on every pooled connection."""
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            try:
                await asyncio.wait_for(conn.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                conn.close()
