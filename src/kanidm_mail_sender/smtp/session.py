"""An open SMTP session after the handshake: commands written, replies read in order.

aiosmtplib opens the session (TLS, EHLO, STARTTLS, AUTH); then its transport is handed to a
``SmtpSession``, which runs the mail transactions. aiosmtplib's protocol reads one reply per
command and drops bytes that arrive before the previous reply was picked up, so the replies
to pipelined commands (RFC 2920) cannot go through it. What is ours is small: a strict reply
reader that keeps every reply in arrival order, and a count of the replies owed, so that a
reply nobody asked for (a stale 421, garbage) marks the session unusable instead of being
taken as the answer to the next command.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import NamedTuple, cast

__all__ = [
    "Reply",
    "SessionClosed",
    "SessionError",
    "SessionGarbled",
    "SessionTimeout",
    "SmtpSession",
]

# RFC 5321 allows 512 octets per reply line; real relays send longer ones (Exchange's
# multi-kilobyte 5.7.x texts), so lines are bounded where aiosmtplib bounds them.
MAX_LINE = 8192
MAX_REPLY_LINES = 64


class Reply(NamedTuple):
    """One complete reply: its code and its lines' texts joined by newlines."""

    code: int
    text: str


class SessionError(Exception):
    """The session cannot go on: the mail in flight is not known to be accepted."""


class SessionClosed(SessionError):
    """The relay closed the connection, or it broke."""


class SessionTimeout(SessionError):
    """The relay did not answer in time."""


class SessionGarbled(SessionError):
    """The relay sent something that is not an SMTP reply, or a reply nobody asked for."""


class SmtpSession(asyncio.Protocol):
    """Our end of one SMTP connection, taken over from aiosmtplib once it is authenticated.

    ``send`` writes commands in one write and waits for exactly their replies. Bytes beyond
    the replies owed make the session unusable; ``usable`` is checked before each reuse, as
    httpcore checks a pooled connection for unread bytes or EOF.
    """

    def __init__(self, extensions: dict[str, str], *, timeout: float) -> None:
        self.extensions = extensions
        self.pipelining = "pipelining" in extensions
        self._timeout = timeout
        self._transport: asyncio.WriteTransport | None = None
        self._pending = bytearray()  # the start of a line not yet ended
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply
        self._replies: deque[Reply] = deque()
        self._owed = 0  # replies to commands written and not yet handed to a caller
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        self._failure: SessionError | None = None
        self._lost = asyncio.Event()  # the transport called connection_lost

    @classmethod
    def take_over(
        cls, transport: asyncio.BaseTransport, extensions: dict[str, str], *, timeout: float
    ) -> SmtpSession:
        """Become the protocol of an open, idle ``transport`` (aiosmtplib's, after AUTH)."""
        session = cls(extensions, timeout=timeout)
        transport.set_protocol(session)
        session._transport = cast(asyncio.WriteTransport, transport)
        return session

    @property
    def usable(self) -> bool:
        """Open, nothing owed, nothing unread: safe to start a transaction on."""
        transport = self._transport
        return (
            self._failure is None
            and transport is not None
            and not transport.is_closing()
            and self._owed == 0
            and not self._replies
            and not self._pending
            and not self._lines
        )

    async def send(self, data: bytes, replies: int) -> list[Reply]:
        """Write ``data`` (``replies`` commands, or a message and its dot) and return their
        replies in order; each wait for a reply is bounded by the session's timeout."""
        transport = self._transport
        if self._failure is not None:
            raise self._failure
        if transport is None or transport.is_closing():
            raise SessionClosed("the connection is closed")
        self._owed += replies
        transport.write(data)
        return await self._collect(replies)

    async def _collect(self, count: int) -> list[Reply]:
        while len(self._replies) < count:
            if self._failure is not None:
                raise self._failure
            self._wanted = count
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            # One timer handle per wait: asyncio.timeout() costs several times as much, and
            # this runs twice per mail.
            timer = loop.call_later(self._timeout, self._time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._owed -= count
        return [self._replies.popleft() for _ in range(count)]

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if waiter is self._waiter:
            self._fail(SessionTimeout(f"no reply within {self._timeout:g} s"))

    def unclaimed(self) -> list[Reply]:
        """Replies that arrived before the session failed and that no caller took: what the
        relay said to a pipelined group before it hung up (a 421, a refused RCPT)."""
        return list(self._replies) if self._failure is not None else []

    def close(self) -> None:
        """Hang up at once; a transaction without its final dot is then void (RFC 5321)."""
        if self._failure is None:
            self._failure = SessionClosed("the connection was closed by us")
        if self._transport is not None:
            self._transport.close()

    async def hang_up(self, within: float) -> None:
        """Close, and wait up to ``within`` seconds for the connection to be gone, then
        abort it: a TLS close waits for the relay's close_notify, and a loop closed before
        it comes leaks the socket (uvloop then refuses to close: EBUSY)."""
        transport = self._transport
        self.close()
        if transport is None or self._lost.is_set():
            return
        try:
            async with asyncio.timeout(within):
                await self._lost.wait()
        except TimeoutError:
            abort = getattr(transport, "abort", None)  # uvloop's TLS transport has it too
            if callable(abort):
                abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(SessionClosed(f"the relay closed the connection{reason}"))
        self._transport = None
        self._lost.set()

    def eof_received(self) -> bool:
        self._fail(SessionClosed("the relay closed the connection"))
        return False  # and close our side too

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            if self._pending:
                self._pending += data[start : end + 1]
                line = bytes(self._pending)
                self._pending.clear()
            else:
                line = data[start : end + 1]
            if not self._line(line):
                return
            start = end + 1
            end = data.find(b"\n", start)
        self._pending += data[start:]
        if len(self._pending) > MAX_LINE:
            self._fail(SessionGarbled(f"a reply line longer than {MAX_LINE} bytes"))
            return
        waiter = self._waiter
        if waiter is not None and len(self._replies) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def _line(self, line: bytes) -> bool:
        """Take one reply line; False when the session failed on it."""
        code = line[:3]
        separator = line[3:4]
        if (
            len(line) > MAX_LINE
            or not code.isdigit()
            or code[:1] not in b"2345"
            or separator not in (b" ", b"-", b"\r", b"\n")
            or (self._lines and self._lines[0][:3] != code)
            or len(self._lines) >= MAX_REPLY_LINES
        ):
            shown = line[:80].decode("ascii", "backslashreplace")
            self._fail(SessionGarbled(f"the relay sent something that is not a reply: {shown}"))
            return False
        if separator == b"-":
            self._lines.append(line)
            return True
        lines, self._lines = self._lines, []
        lines.append(line)
        if len(self._replies) >= self._owed:
            shown = line[:80].decode("ascii", "backslashreplace")
            self._fail(SessionGarbled(f"the relay sent a reply nobody asked for: {shown}"))
            return False
        text = "\n".join(
            raw[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape") for raw in lines
        )
        self._replies.append(Reply(int(code), text))
        return True

    def _fail(self, failure: SessionError) -> None:
        if self._failure is None:
            self._failure = failure
        if self._transport is not None:
            self._transport.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
