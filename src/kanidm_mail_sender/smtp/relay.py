"""The SMTP relay: a small pool of TLS connections and the mapping of SMTP failures.

``smtp://`` always requires STARTTLS and ``smtps://`` always uses implicit TLS; aiosmtplib's
default (``start_tls=None``) would silently fall back to clear text, so it is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from kanidm_mail_sender.config.relays import RelayEndpoint
from kanidm_mail_sender.core.mail import Envelope
from kanidm_mail_sender.core.queueid import relay_queue_id
from kanidm_mail_sender.core.replies import Receipt, Stage, Verdict, read_reply, redact_reply
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
from kanidm_mail_sender.smtp.auth import PASSWORD_HINT, SmtpAuth
from kanidm_mail_sender.smtp.session import (
    Reply,
    SessionClosed,
    SessionError,
    SessionTimeout,
    SmtpSession,
)

__all__ = ["SmtpRelay", "build_tls_context", "classify_smtp_error", "reply_error"]

_HEALTH_CHECK_AFTER = 2.0  # seconds idle before a pooled connection is NOOP-checked
_QUIT_TIMEOUT = 1.0  # a relay that does not answer QUIT must not delay our stop
_HANG_UP_TIMEOUT = 0.5  # nor one that does not answer our TLS close


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
                f"mail_ca_path {ca_path}: cannot load a PEM CA certificate from it ({exc}); "
                "point it at the PEM file of the CA that signed the relay's certificate, or "
                "remove the key to trust the system's CAs only"
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
    shown = redact_reply(text, secrets)
    # Read from the relay's own words; only the redacted text is kept, shown and journalled.
    refusal = dataclasses.replace(read_reply(stage, code, text), text=shown)
    what = "deferred" if 400 <= code < 500 else "refused"
    message = f"the relay {what} {_STAGE_WORDS[stage]}: {code} {shown}"
    if stage is Stage.AUTH:
        return RelayMisconfigured(f"{message}; {auth_hint}", code=code, refusal=refusal)
    return _VERDICT_ERRORS[refusal.verdict](message, code=code, refusal=refusal)


def classify_smtp_error(
    exc: BaseException,
    stage: Stage,
    secrets: tuple[str, ...] = (),
    auth_hint: str = PASSWORD_HINT,
) -> RelayError:
    """Map an aiosmtplib (or ssl/OS) exception raised while a session opens (``stage``
    CONNECT or AUTH) to one of ours; all are relay-wide. A session's mail transactions
    run on SmtpSession and map its errors themselves (``_session_error``)."""
    if isinstance(exc, RelayError):
        return exc  # already ours (the OAuth token endpoint)
    tls = _tls_failure(exc)
    if tls is not None:
        return RelayMisconfigured(f"TLS with the relay failed: {tls}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_error(stage, exc.code, exc.message, secrets, auth_hint)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return RelayUnavailable(f"the relay did not answer in time while connecting: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return RelayUnavailable(f"cannot connect to the relay: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered, no usable mechanism: the relay does not fit.
        return RelayMisconfigured(f"the relay cannot be used as configured: {exc}")
    return RelayUnavailable(f"unexpected error connecting to the relay: {exc!r}")


def _still_valid(not_after: float | None, clock: Callable[[], float]) -> None:
    if not_after is not None and clock() >= not_after:
        raise LinkExpired("the reset link expired before the mail went out")


def _session_error(exc: SessionError, stage: Stage) -> DeliveryDeferred:
    """The destination's deferral for a session that broke while ``stage`` was in flight."""
    if isinstance(exc, SessionTimeout):
        return DeliveryDeferred(
            f"the relay did not answer {stage.value} in time ({exc})", transport=True
        )
    if isinstance(exc, SessionClosed):
        return DeliveryDeferred(
            f"the relay closed the connection during {stage.value} ({exc})",
            transport=True,
            disconnected_at=stage.value,
        )
    return DeliveryDeferred(
        f"the session with the relay broke during {stage.value}: {exc}", transport=True
    )


_DOT_LINE = re.compile(rb"(?m)^\.")


def _data_block(data: bytes) -> bytes:
    """The message as sent after 354: lines starting with a dot doubled, then the end dot."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _DOT_LINE.sub(b"..", data)
    return data + b".\r\n"


async def _transaction(
    session: SmtpSession,
    envelope: Envelope,
    *,
    not_after: float | None,
    clock: Callable[[], float],
    secrets: tuple[str, ...],
) -> Receipt:
    """MAIL, RCPT and DATA for one recipient, then the message; returns the final reply.

    With PIPELINING (RFC 2920) the three commands go in one write and their replies are
    mapped back to them in order, so a refused RCPT is still the recipient's own failure;
    without it, one command per round trip. The link's expiry is checked before MAIL and
    again right before the message goes out: a reset that expired while it waited is never
    mailed (after a 354 the only way out is to hang up, which voids the transaction).
    """
    sender, recipient = envelope.sender, envelope.recipient
    extensions = session.extensions
    options = b" SIZE=%d" % len(envelope.data) if "size" in extensions else b""
    if not (sender.isascii() and recipient.isascii()):
        if "smtputf8" not in extensions:
            raise DeliveryRejected(
                f"{recipient if not recipient.isascii() else sender} needs SMTPUTF8, "
                "which the relay does not offer"
            )
        options += b" SMTPUTF8"
    commands = (
        b"MAIL FROM:<%b>%b\r\n" % (sender.encode(), options),
        b"RCPT TO:<%b>\r\n" % recipient.encode(),
        b"DATA\r\n",
    )
    _still_valid(not_after, clock)
    stage = Stage.MAIL
    try:
        if session.pipelining:
            replies = await session.send(b"".join(commands), 3)
        else:
            replies = []
            for stage, command in zip(_COMMAND_STAGES, commands, strict=True):
                if stage is Stage.DATA:
                    _still_valid(not_after, clock)
                (reply,) = await session.send(command, 1)
                replies.append(reply)
                if not _taken(stage, reply.code):
                    break
        refusal = _refusal(replies, secrets)
        if refusal is not None:
            await _recover(session, replies)
            raise refusal
        try:
            _still_valid(not_after, clock)
        except LinkExpired:
            session.close()  # past the 354, hanging up is what voids the transaction
            raise
        stage = Stage.DATA
        (reply,) = await session.send(_data_block(envelope.data), 1)
    except SessionError as exc:
        session.close()
        # A relay that refuses and hangs up at once (421, or 550 and goodbye) is taken at
        # its word, as without pipelining, rather than as a broken connection.
        if stage is Stage.MAIL and (said := _refusal(session.unclaimed(), secrets)) is not None:
            raise said from exc
        raise _session_error(exc, stage) from exc
    if reply.code != 250:
        if reply.code == 421:
            session.close()
        raise reply_error(Stage.DATA, reply.code, reply.text, secrets)
    return Receipt(reply.text, relay_queue_id(reply.text))


_COMMAND_STAGES = (Stage.MAIL, Stage.RCPT, Stage.DATA)


def _taken(stage: Stage, code: int) -> bool:
    """Whether the relay took the command of ``stage`` (251: will forward, a RCPT yes)."""
    if stage is Stage.DATA:
        return code == 354
    return code == 250 or (code == 251 and stage is Stage.RCPT)


def _refusal(replies: list[Reply], secrets: tuple[str, ...]) -> RelayError | None:
    """The error for the first command the relay did not take, if any."""
    for stage, reply in zip(_COMMAND_STAGES, replies, strict=False):
        if not _taken(stage, reply.code):
            return reply_error(stage, reply.code, reply.text, secrets)
    return None


async def _recover(session: SmtpSession, replies: list[Reply]) -> None:
    """Leave a refused transaction so the connection can carry the next mail, or hang up."""
    if any(reply.code == 421 for reply in replies) or replies[-1].code == 354:
        # 421: the relay is closing. 354 after a refusal: the relay would take a message
        # for a transaction we consider failed; hanging up voids it.
        session.close()
        return
    await _simple(session, b"RSET\r\n")


async def _simple(session: SmtpSession, command: bytes) -> bool:
    """Send ``command`` (RSET, NOOP) alone; True on 250, else the session is closed."""
    try:
        (reply,) = await session.send(command, 1)
    except SessionError:
        return False
    if reply.code == 250:
        return True
    session.close()
    return False


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
        self._idle: list[tuple[SmtpSession, float]] = []
        self.connections_opened = 0
        self.connection_attempts = 0

    async def _connect(self) -> SmtpSession:
        """A new authenticated session; every failure is relay-wide (RelayUnavailable)."""
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
            transport = conn.transport
            if transport is None or not conn.is_connected:
                raise aiosmtplib.SMTPServerDisconnected("the relay hung up after the handshake")
        except BaseException as exc:
            # Abort, not close: a TLS close waits for the relay's close_notify, and a relay
            # that just refused us need not send one; the socket must go now.
            abort = getattr(conn.transport, "abort", None)  # uvloop's TLS transport has it too
            if callable(abort):
                abort()
            conn.close()
            if isinstance(exc, RelayError):
                raise
            if isinstance(exc, Exception):
                hint = self.auth.hint if self.auth is not None else PASSWORD_HINT
                raise classify_smtp_error(exc, stage, self._secrets(), hint) from exc
            raise
        self.connections_opened += 1
        return SmtpSession.take_over(
            transport, conn.esmtp_extensions, timeout=self._command_timeout
        )

    async def _acquire(self, *, fresh: bool = False) -> tuple[SmtpSession, bool]:
        """A ready session, and whether it was reused from the pool."""
        now = time.monotonic()
        while self._idle and not fresh:
            session, since = self._idle.pop()
            if not session.usable or now - since > self._idle_timeout:
                session.close()
                continue
            if now - since > _HEALTH_CHECK_AFTER and not await _simple(session, b"NOOP\r\n"):
                continue
            return session, True
        return await self._connect(), False

    async def send(
        self,
        envelope: Envelope,
        *,
        not_after: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Receipt:
        """Relay one envelope; returns the relay's receipt, or raises a RelayError subclass.

        ``not_after`` (Unix time) is checked before MAIL and before the message: past it,
        nothing is sent and LinkExpired is raised.
        """
        async with self._slots:
            for fresh_retry in (False, True):
                session, reused = await self._acquire(fresh=fresh_retry)
                try:
                    reply = await _transaction(
                        session,
                        envelope,
                        not_after=not_after,
                        clock=clock,
                        secrets=self._secrets(),
                    )
                except DeliveryDeferred as exc:
                    session.close()
                    # A kept-alive connection the relay dropped while idle fails at MAIL;
                    # that is not the destination's fault: once more on a fresh one.
                    if reused and exc.disconnected_at == Stage.MAIL.value:
                        continue
                    raise
                except BaseException:
                    self._release(session)  # kept only when it is still clean
                    raise
                self._release(session)
                return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _secrets(self) -> tuple[str, ...]:
        return self.auth.secrets() if self.auth is not None else ()

    def _release(self, session: SmtpSession) -> None:
        if session.usable:
            self._idle.append((session, time.monotonic()))
        else:
            session.close()

    async def check(self) -> None:
        """Connect, negotiate TLS and authenticate, then hang up without sending."""
        await _quit(await self._connect())

    async def close(self) -> None:
        """Say QUIT on every pooled connection, all at once and within a bound."""
        idle, self._idle = self._idle, []
        if idle:
            await asyncio.gather(*(_quit(session) for session, _ in idle))
        if self.auth is not None:
            await self.auth.aclose()


async def _quit(session: SmtpSession) -> None:
    """QUIT, waiting at most ``_QUIT_TIMEOUT`` for the relay's 221, then hang up."""
    with contextlib.suppress(SessionError, TimeoutError):
        async with asyncio.timeout(_QUIT_TIMEOUT):
            await session.send(b"QUIT\r\n", 1)
    await session.hang_up(_HANG_UP_TIMEOUT)
