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
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from kanidm_mail_sender.config import RelayEndpoint
from kanidm_mail_sender.errors import (
    ConfigError,
    DeliveryDeferred,
    DeliveryRejected,
    LinkExpired,
    RelayError,
    RelayMisconfigured,
    RelayThrottled,
    RelayUnavailable,
)
from kanidm_mail_sender.mail import Envelope
from kanidm_mail_sender.replies import Stage, Verdict, classify_reply, redact_reply
from kanidm_mail_sender.smtp_auth import PASSWORD_HINT, SmtpAuth

__all__ = ["SmtpRelay", "build_tls_context", "classify_smtp_error", "reply_error"]

_HEALTH_CHECK_AFTER = 2.0  # seconds idle before a pooled connection is NOOP-checked
_QUIT_TIMEOUT = 1.0  # a relay that does not answer QUIT must not delay our stop


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


_VERDICT_ERRORS: dict[Verdict, type[RelayError]] = {
    Verdict.DEFER: DeliveryDeferred,
    Verdict.REJECT: DeliveryRejected,
    Verdict.RELAY_DOWN: RelayUnavailable,
    Verdict.THROTTLE: RelayThrottled,
}
_STAGE_WORDS = {
    Stage.CONNECT: "the connection",
    Stage.AUTH: "our credentials",
    Stage.MAIL: "the sender (MAIL FROM)",
    Stage.RCPT: "the recipient",
    Stage.DATA: "the mail",
}


def reply_error(
    stage: Stage,
    code: int,
    text: str,
    secrets: tuple[str, ...] = (),
    auth_hint: str = PASSWORD_HINT,
) -> RelayError:
    """The error for a refusing reply ``code`` to ``stage``, its text redacted."""
    verdict = classify_reply(stage, code, text)
    shown = redact_reply(text, secrets)
    what = "deferred" if 400 <= code < 500 else "refused"
    message = f"the relay {what} {_STAGE_WORDS[stage]}: {code} {shown}"
    if stage is Stage.AUTH:
        return RelayMisconfigured(f"{message}; {auth_hint}", code=code)
    return _VERDICT_ERRORS[verdict](message, code=code)


def classify_smtp_error(
    exc: BaseException,
    stage: Stage,
    secrets: tuple[str, ...] = (),
    auth_hint: str = PASSWORD_HINT,
) -> RelayError:
    """Map an aiosmtplib (or ssl/OS) exception raised during ``stage`` to one of ours."""
    if isinstance(exc, RelayError):
        return exc  # already ours (the OAuth token endpoint)
    tls = _tls_failure(exc)
    if tls is not None:
        return RelayMisconfigured(f"TLS with the relay failed: {tls}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_error(stage, exc.code, exc.message, secrets, auth_hint)
    if stage is Stage.CONNECT or stage is Stage.AUTH:
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            return RelayUnavailable(f"the relay did not answer in time while connecting: {exc}")
        if isinstance(
            exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError
        ):
            return RelayUnavailable(f"cannot connect to the relay: {exc}")
        if isinstance(exc, aiosmtplib.SMTPException):
            # STARTTLS or AUTH not offered, no usable mechanism: the relay does not fit.
            return RelayMisconfigured(f"the relay cannot be used as configured: {exc}")
        return RelayUnavailable(f"unexpected error connecting to the relay: {exc!r}")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return DeliveryDeferred(
            f"the relay closed the connection during {stage.value}: {exc}",
            transport=True,
            disconnected_at=stage.value,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return DeliveryDeferred(
            f"the relay did not answer {stage.value} in time: {exc}", transport=True
        )
    if isinstance(exc, OSError):
        return DeliveryDeferred(f"the connection to the relay failed: {exc}", transport=True)
    return DeliveryDeferred(f"unexpected error talking to the relay: {exc!r}", transport=True)


def _still_valid(not_after: float | None, clock: Callable[[], float]) -> None:
    if not_after is not None and clock() >= not_after:
        raise LinkExpired("the reset link expired before the mail went out")


async def _transaction(
    conn: aiosmtplib.SMTP,
    envelope: Envelope,
    *,
    not_after: float | None,
    clock: Callable[[], float],
    secrets: tuple[str, ...],
) -> str:
    """MAIL, RCPT and DATA for one recipient; returns the relay's final reply.

    This is aiosmtplib's ``sendmail`` without its four re-parses of addresses we already
    checked (a tenth of the CPU per mail), with SMTPUTF8 when an address needs it, and with
    the link's expiry checked right before DATA: a reset that expired while it waited is
    never mailed.
    """
    sender, recipient = envelope.sender, envelope.recipient
    options = [b"SIZE=%d" % len(envelope.data)] if conn.supports_extension("size") else []
    if not (sender.isascii() and recipient.isascii()):
        if not conn.supports_extension("smtputf8"):
            raise DeliveryRejected(
                f"{recipient if not recipient.isascii() else sender} needs SMTPUTF8, "
                "which the relay does not offer"
            )
        options.append(b"SMTPUTF8")
    _still_valid(not_after, clock)
    stage = Stage.MAIL
    try:
        reply = await conn.execute_command(b"MAIL", b"FROM:<%b>" % sender.encode(), *options)
        if reply.code != 250:
            raise reply_error(stage, reply.code, reply.message, secrets)
        stage = Stage.RCPT
        reply = await conn.execute_command(b"RCPT", b"TO:<%b>" % recipient.encode())
        if reply.code not in (250, 251):
            raise reply_error(stage, reply.code, reply.message, secrets)
        _still_valid(not_after, clock)
        stage = Stage.DATA
        reply = await conn.data(envelope.data)
    except RelayError:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await conn.rset()  # leave the pooled connection ready for the next mail
        raise
    except Exception as exc:
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code != 421:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await conn.rset()
        raise classify_smtp_error(exc, stage, secrets) from exc
    return reply.message


class SmtpRelay:
    """Sends envelopes over at most ``max_connections`` reused TLS connections."""

    def __init__(
        self,
        endpoint: RelayEndpoint,
        *,
        tls_context: ssl.SSLContext,
        auth: SmtpAuth | None = None,
        helo_name: str | None = None,
        connect_timeout: float = 15,
        command_timeout: float = 60,
        max_connections: int = 4,
        idle_timeout: float = 60,
    ) -> None:
        self.endpoint = endpoint
        self._tls = tls_context
        self.auth = auth
        self._helo = helo_name or socket.gethostname()
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._idle_timeout = idle_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self.connections_opened = 0
        self.connection_attempts = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        """A new authenticated connection; every failure is relay-wide (RelayUnavailable)."""
        conn = aiosmtplib.SMTP(
            hostname=self.endpoint.host,
            port=self.endpoint.port,
            use_tls=self.endpoint.implicit_tls,
            start_tls=not self.endpoint.implicit_tls,
            tls_context=self._tls,
            local_hostname=self._helo,
            timeout=self._command_timeout,
        )
        self.connection_attempts += 1
        stage = Stage.CONNECT
        try:
            await conn.connect(timeout=self._connect_timeout)
            if conn.is_ehlo_or_helo_needed:  # after STARTTLS, and before reading extensions
                await conn.ehlo()
            if self.auth is not None:
                stage = Stage.AUTH
                await self.auth.authenticate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, RelayError):
                raise
            if isinstance(exc, Exception):
                hint = self.auth.hint if self.auth is not None else PASSWORD_HINT
                raise classify_smtp_error(exc, stage, self._secrets(), hint) from exc
            raise
        self.connections_opened += 1
        return conn

    async def _acquire(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        """A ready connection, and whether it was reused from the pool."""
        now = time.monotonic()
        while self._idle and not fresh:
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
            return conn, True
        return await self._connect(), False

    async def send(
        self,
        envelope: Envelope,
        *,
        not_after: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> str:
        """Relay one envelope; returns the relay's reply, or raises a RelayError subclass.

        ``not_after`` (Unix time) is checked before MAIL and before DATA: past it, nothing is
        sent and LinkExpired is raised.
        """
        async with self._slots:
            for fresh_retry in (False, True):
                conn, reused = await self._acquire(fresh=fresh_retry)
                try:
                    reply = await _transaction(
                        conn, envelope, not_after=not_after, clock=clock, secrets=self._secrets()
                    )
                except DeliveryDeferred as exc:
                    conn.close()
                    # A kept-alive connection the relay dropped while idle fails at MAIL;
                    # that is not the destination's fault: once more on a fresh one.
                    if reused and exc.disconnected_at == Stage.MAIL.value:
                        continue
                    raise
                except (LinkExpired, DeliveryRejected):
                    self._release(conn)
                    raise
                except BaseException:
                    conn.close()
                    raise
                self._release(conn)
                return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _secrets(self) -> tuple[str, ...]:
        return self.auth.secrets() if self.auth is not None else ()

    def _release(self, conn: aiosmtplib.SMTP) -> None:
        if conn.is_connected:
            self._idle.append((conn, time.monotonic()))

    async def check(self) -> None:
        """Connect, negotiate TLS and authenticate, then hang up without sending."""
        conn = await self._connect()
        try:
            await asyncio.wait_for(conn.quit(), _QUIT_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            conn.close()

    async def close(self) -> None:
        """Say QUIT on every pooled connection, all at once and within a bound."""
        idle, self._idle = self._idle, []

        async def quit_one(conn: aiosmtplib.SMTP) -> None:
            try:
                await conn.quit()
            except (aiosmtplib.SMTPException, OSError):
                conn.close()

        tasks = [asyncio.create_task(quit_one(conn)) for conn, _ in idle]
        if tasks:
            await asyncio.wait(tasks, timeout=_QUIT_TIMEOUT)
        for conn, _ in idle:
            conn.close()
        for task in tasks:
            task.cancel()
        if self.auth is not None:
            await self.auth.aclose()
