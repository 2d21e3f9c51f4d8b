"""A capturing SMTP relay stand-in on aiosmtpd: implicit TLS, STARTTLS-required or plain,
optional AUTH, and scripted faults per recipient."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.controller import UnthreadedController
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from kanidm_mail_sender.sandbox.certs import Certs

__all__ = ["CapturedMail", "GreetingGate", "SmtpStandIn"]

Mode = Literal["starttls", "smtps", "plain"]


def _not_aiosmtpd_self_deprecation(record: logging.LogRecord) -> bool:
    """aiosmtpd 1.4 sets its own deprecated ``Session.login_data`` on every successful AUTH
    and logs a warning about it on ``mail.log``; no authenticator can avoid that, and it is
    not the sandbox's use. Every other line of that logger passes."""
    return not record.getMessage().startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_not_aiosmtpd_self_deprecation)


@dataclass(frozen=True)
class CapturedMail:
    """One accepted mail: envelope and parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    authenticated_as: str | None
    mail_options: list[str] = field(default_factory=list)
    received_at: float = 0.0  # Unix time the relay took it

    @property
    def message(self) -> EmailMessage:
        """The mail parsed with the modern policy (decoded headers)."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RelayFaults:
    """Scripted relay behaviour. Lists are consumed one entry per matching attempt."""

    mail_replies: list[str] = field(default_factory=list)  # answers to MAIL FROM, in turn
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: dict[str, list[str]] = field(default_factory=dict)
    drop_in_data: dict[str, int] = field(default_factory=dict)
    stall_in_data: float = 0.0
    # While set: every MAIL FROM gets this reply; every RCPT waits this long first.
    mail_refusal: str | None = None
    stall_in_rcpt: float = 0.0
    # While set: every DATA gets this reply (a relay refusing our sender after DATA).
    data_refusal: str | None = None
    # Hang up after every this many mails of a session (a relay limiting session length).
    close_after_mails: int = 0


class _Handler:
    def __init__(self, stand_in: SmtpStandIn) -> None:
        self._s = stand_in

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self._s.pipelining:  # aiosmtpd reads commands in order, so it can say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        with self._s.lock:
            self._s.mail_commands += 1
            if self._s.faults.mail_replies:
                return self._s.faults.mail_replies.pop(0)
            if self._s.faults.mail_refusal is not None:
                return self._s.faults.mail_refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self._s.faults.stall_in_rcpt:
            await asyncio.sleep(self._s.faults.stall_in_rcpt)
        with self._s.lock:
            replies = self._s.faults.rcpt_replies.get(address)
            if replies:
                return replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        self._s.data_started += 1
        if self._s.faults.stall_in_data:
            await asyncio.sleep(self._s.faults.stall_in_data)
        with self._s.lock:
            if self._s.faults.drop_in_data.get(rcpt, 0) > 0:
                self._s.faults.drop_in_data[rcpt] -= 1
                # After STARTTLS aiosmtpd keeps the raw socket separately; close both.
                for transport in (server.transport, server._original_transport):
                    if transport is not None:
                        transport.close()
                return "421 4.4.2 dropped by test"
            replies = self._s.faults.data_replies.get(rcpt)
            if replies:
                return replies.pop(0)
            if self._s.faults.data_refusal is not None:
                self._s.data_refused += 1
                return self._s.faults.data_refusal
            auth = session.auth_data if session.authenticated else None
            login = auth.login if isinstance(auth, LoginPassword) else None
            content = envelope.original_content or envelope.content or b""
            assert isinstance(content, bytes)
            mail = CapturedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=content,
                authenticated_as=login.decode() if isinstance(login, bytes) else None,
                mail_options=list(envelope.mail_options),
                received_at=time.time(),
            )
            if self._s.keep:
                self._s.mails.append(mail)
            self._s.count += 1
            if self._s.on_mail is not None:
                self._s.on_mail(mail)
            every = self._s.faults.close_after_mails
            session_mails = getattr(session, "mails", 0) + 1
            session.mails = session_mails  # type: ignore[attr-defined]
            if every and session_mails % every == 0 and server.transport is not None:
                # Runs after aiosmtpd writes the 250 below (in this same step); close()
                # flushes it first, so the client sees the 250, then the end of the session.
                asyncio.get_running_loop().call_soon(server.transport.close)
        return f"250 2.0.0 Ok: queued as Q{self._s.count}"


_XOAUTH2_ERROR = json.dumps(
    {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
)


class _OAuthHandler(_Handler):
    """Also speaks SASL XOAUTH2: accepts only tokens the check says are current, and answers
    others as Gmail and Exchange do: an error challenge, then 535 after the empty reply."""

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        check = self._s.xoauth2
        assert check is not None
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False)
        else:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            blob = answer
        fields = dict(
            part.split("=", 1)
            for part in blob.decode("utf-8", "replace").split("\x01")
            if "=" in part
        )
        user, bearer = fields.get("user", ""), fields.get("auth", "")
        token = bearer.removeprefix("Bearer ")
        if bearer.startswith("Bearer ") and check(user, token):
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        self._s.auth_failures += 1
        await server.challenge_auth(_XOAUTH2_ERROR)
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )


class SmtpStandIn:
    """An aiosmtpd relay on the running event loop (a thread would fight the code under test
    for the GIL and add milliseconds to every reply); ``mails`` collects what it accepted."""

    def __init__(
        self,
        certs: Certs,
        *,
        mode: Mode = "starttls",
        auth: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        keep: bool = True,
        smtputf8: bool = True,
        xoauth2: Callable[[str, str], bool] | None = None,
        pipelining: bool = True,
    ) -> None:
        self.certs = certs
        self.pipelining = pipelining
        self.smtputf8 = smtputf8
        self.mode = mode
        self.auth = auth
        self.xoauth2 = xoauth2  # (user, token) -> valid: XOAUTH2 is then the only mechanism
        self.host = host
        self.mails: list[CapturedMail] = []
        self.count = 0
        self.keep = keep
        self.faults = RelayFaults()
        self.lock = threading.Lock()
        self.on_mail: Any = None
        self.auth_failures = 0
        self.mail_commands = 0
        self.data_started = 0
        self.data_refused = 0
        self._controller: UnthreadedController | None = None
        self._port = port

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._controller is not None
        return int(self._controller.port)

    @property
    def url(self) -> str:
        """The ``mail_relay`` URL for this stand-in."""
        scheme = "smtps" if self.mode == "smtps" else "smtp"
        return f"{scheme}://{self.host}:{self.port}"

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.auth[0].encode()
            and auth_data.password == self.auth[1].encode()
        )
        if not ok:
            self.auth_failures += 1
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def start(self) -> None:
        """Start listening on the running loop (picks a free port when ``port`` was 0)."""
        options: dict[str, Any] = {
            "server_hostname": "relay.test",
            "hostname": self.host,
            "enable_SMTPUTF8": self.smtputf8,
        }
        if self.mode == "smtps":
            options["ssl_context"] = self.certs.server_context()
            options["auth_require_tls"] = False  # aiosmtpd only counts STARTTLS as TLS
        elif self.mode == "starttls":
            options["tls_context"] = self.certs.server_context()
            options["require_starttls"] = True
        if self.auth is not None:
            options["auth_required"] = True
            options["authenticator"] = self._authenticator
        handler = _Handler(self)
        if self.xoauth2 is not None:
            handler = _OAuthHandler(self)
            options["auth_required"] = True
            options["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]
        port = self._port or _free_port(self.host)
        controller = UnthreadedController(
            handler, port=port, loop=asyncio.get_running_loop(), **options
        )
        controller.server_coro = controller._create_server()
        controller.server = await controller.server_coro
        self._controller = controller

    async def stop(self) -> None:
        """Stop listening and end open sessions (on Python 3.12+ ``wait_closed`` waits for
        every client, so a client that keeps its connection would hold the stop forever)."""
        if self._controller is not None:
            server = self._controller.server
            if server is not None:
                server.close()
                if hasattr(server, "close_clients"):  # Python 3.13+
                    server.close_clients()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._controller.finalize(), 2)  # type: ignore[no-untyped-call]
            self._controller = None


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class GreetingGate:
    """A TCP front for a plain-text-greeting (STARTTLS) relay: while ``refusing`` it answers
    every connection ``421`` and hangs up, otherwise it passes bytes through; it counts the
    connections either way, so a test can bound how often the client tries."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.host = host
        self.refusing = True
        self.reply = b"421 4.3.2 Service not available, closing transmission channel\r\n"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The ``mail_relay`` URL of the gate."""
        return f"smtp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._connection, self.host, 0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self.refusing:
            writer.write(self.reply)
            with contextlib.suppress(OSError):
                await writer.drain()
            await self._close(writer)
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                await self._close(dst)

        tasks = {
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        }
        self._pipes |= tasks
        for task in tasks:
            task.add_done_callback(self._pipes.discard)

    async def cut(self) -> None:
        """Close every connection passed through so far (a relay restarting)."""
        for task in list(self._pipes):
            task.cancel()
        for writer in list(self._writers):
            await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def stop(self) -> None:
        """Stop listening and cut every passed-through connection."""
        if self._server is not None:
            self._server.close()
            for task in list(self._pipes):
                task.cancel()
            if self._pipes:
                await asyncio.wait(list(self._pipes), timeout=2)
            for writer in list(self._writers):
                await self._close(writer)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
