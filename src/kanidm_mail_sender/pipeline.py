"""Mark-sent over one keep-alive HTTPS connection, many requests per round trip.

httpx spends about a millisecond of CPU per request on pool and stream bookkeeping, more than
the SMTP send it follows. Kanidm answers pipelined HTTP/1.1 requests in order, and mark-sent is
idempotent in effect (a repeat only moves ``sent_at``), so the marks that pile up while one
batch is on the wire go out together in the next write, and requests that a lost connection
left unanswered can be written again on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass
from uuid import UUID

from kanidm_mail_sender.config import ClientConfig
from kanidm_mail_sender.errors import KanidmError, KanidmResponseError, KanidmUnavailable
from kanidm_mail_sender.kanidm import USER_AGENT, sent_path, status_error, tls_context

__all__ = ["MarkPipeline", "build_mark_pipeline", "proxied"]

_MAX_BODY = 1 << 20  # a mark-sent answer is a few bytes; anything huge is not Kanidm
_KEEPALIVE_EXPIRY = 5.0  # like httpx: do not reuse a connection idle for longer


class _Malformed(Exception):
    """The peer did not speak HTTP/1.1 as expected."""


@dataclass(slots=True)
class _Pending:
    message_id: UUID
    future: asyncio.Future[tuple[int, bytes]]
    written_before: bool = False


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float

    def close(self) -> None:
        self.writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _Malformed(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return bytes(body)
        if len(body) + size > _MAX_BODY:
            raise _Malformed("response body too large")
        body += (await reader.readexactly(size + 2))[:-2]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.x response: status, body, and whether the server closes after it."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Malformed("response headers too large") from None
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise _Malformed(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if 100 <= status < 200:
            continue  # an interim answer (100 Continue); the real one follows
        connection = headers.get(b"connection", b"")
        closing = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            return status, await _read_chunked(reader), closing
        if b"content-length" in headers:
            length = headers[b"content-length"]
            if not length.isdigit() or int(length) > _MAX_BODY:
                raise _Malformed(f"bad Content-Length {length[:20]!r}")
            return status, await reader.readexactly(int(length)), closing
        if status in (204, 304):
            return status, b"", closing
        return status, await reader.read(_MAX_BODY), True  # delimited by the close


class MarkPipeline:
    """Marks messages sent; concurrent callers share batches on one TLS connection."""

    def __init__(
        self,
        base_url: str,
        token: str,
        ssl_context: ssl.SSLContext,
        *,
        timeout: float,
        connect_timeout: float | None = None,
        max_batch: int = 64,
    ) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or 443
        self._tls = ssl_context
        self._timeout = timeout
        self._connect_timeout = connect_timeout or timeout
        self._max_batch = max_batch
        self._headers = (
            f" HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
            f"User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\n"
            "Content-Length: 4\r\n\r\nnull"
        ).encode("latin-1")
        self._queue: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._connection: _Connection | None = None
        self._closed = False
        self.connections_opened = 0

    async def mark_sent(self, message_id: UUID) -> None:
        """Tell Kanidm the message was relayed; raises a KanidmError subclass otherwise."""
        if self._closed:
            raise KanidmUnavailable(f"marking message {message_id} sent: the client is closed")
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(message_id, future))
        self._wake.set()
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        status, body = await future
        if status != 200:
            raise status_error(status, body, f"marking message {message_id} sent")

    async def aclose(self) -> None:
        """Close the connection; callers still waiting get KanidmUnavailable."""
        self._closed = True
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        self._drop()
        self._fail([*self._in_flight, *self._queue], "the client is closed")
        self._queue.clear()

    async def _drive(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[_Pending] = []
            while self._queue and len(batch) < self._max_batch:
                pending = self._queue.popleft()
                if not pending.future.done():  # its caller may have given up (shutdown)
                    batch.append(pending)
            if batch:
                self._in_flight = batch
                try:
                    await self._exchange(batch)
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    self._drop()
                    self._fail(batch, f"unexpected error ({exc!r})")
                self._in_flight = []

    async def _exchange(self, batch: list[_Pending]) -> None:
        answered, reused = 0, False
        try:
            connection, reused = await self._connect()
            connection.writer.write(
                b"".join(b"POST " + sent_path(p.message_id).encode() + self._headers for p in batch)
            )
            for pending in batch:
                async with asyncio.timeout(self._timeout):
                    status, body, closing = await _read_response(connection.reader)
                answered += 1
                if not pending.future.done():
                    pending.future.set_result((status, body))
                if closing:  # the server ignores what followed; write the rest again
                    self._drop()
                    self._queue.extendleft(reversed(batch[answered:]))
                    return
            connection.last_used = asyncio.get_running_loop().time()
        except TimeoutError:
            self._drop()
            self._fail(batch[answered:], f"Kanidm did not answer within {self._timeout:g} s")
        except _Malformed as exc:
            self._drop()
            self._fail(
                batch[answered:], f"Kanidm's answer is not HTTP/1.1 ({exc})", KanidmResponseError
            )
        except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError) as exc:
            self._drop()
            rest = batch[answered:]
            # A kept-alive connection the server closed meanwhile: the requests never reached
            # a handler, so they are written once more on a fresh connection.
            if reused and answered == 0 and not any(p.written_before for p in rest):
                for pending in rest:
                    pending.written_before = True
                self._queue.extendleft(reversed(rest))
            else:
                self._fail(rest, f"cannot reach Kanidm ({exc or type(exc).__name__})")

    async def _connect(self) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        connection = self._connection
        if connection is not None and now - connection.last_used <= _KEEPALIVE_EXPIRY:
            return connection, True
        self._drop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._host
                )
        except TimeoutError:
            raise ConnectionError(f"no connection within {self._connect_timeout:g} s") from None
        self.connections_opened += 1
        self._connection = _Connection(reader, writer, now)
        return self._connection, False

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @staticmethod
    def _fail(
        pendings: list[_Pending], reason: str, kind: type[KanidmError] = KanidmUnavailable
    ) -> None:
        for pending in pendings:
            if not pending.future.done():
                pending.future.set_exception(
                    kind(f"marking message {pending.message_id} sent: {reason}")
                )


def proxied(base_url: str) -> bool:
    """Whether HTTPS_PROXY/ALL_PROXY (minus NO_PROXY) send Kanidm traffic through a proxy.

    httpx honours those variables and the pipeline does not, so marks then stay on httpx.
    """
    proxies = getproxies_environment()
    if not (proxies.get("https") or proxies.get("all")):
        return False
    return not proxy_bypass(urlsplit(base_url).hostname or "")


def build_mark_pipeline(config: ClientConfig, token: str, *, timeout: float) -> MarkPipeline:
    """A pipeline with the client config's trust settings; its TLS context is built once."""
    context = tls_context(config)
    context.set_alpn_protocols(["http/1.1"])
    return MarkPipeline(
        config.base_url, token, context, timeout=timeout, connect_timeout=config.connect_timeout
    )
