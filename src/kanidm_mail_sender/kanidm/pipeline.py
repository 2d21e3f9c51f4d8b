"""Mark-sent over one keep-alive HTTPS connection, many requests per round trip.

httpx spends about a millisecond of CPU per request on pool and stream bookkeeping, more than
the SMTP send it follows. Kanidm answers pipelined HTTP/1.1 requests in order, and mark-sent
is idempotent in effect (a repeat only moves ``sent_at``), so the marks that pile up while one
batch is on the wire go out together in the next write.

h11 frames both directions; h11's client does not pipeline, so the scheduling is ours: it
writes a batch at once and then walks one h11 state machine through the answers in order.
Because an HTTP/1.1 answer carries nothing that ties it to its request, an answer is trusted
only where a mistake cannot hurt: a 200 in a batch (a wrongly attributed 200 heals itself, as
the message is listed again and marked again), or any answer to a request sent alone. Every
other answer in a batch (a stray 401, a stale 408, a 404 that may belong to a neighbour) has
its request asked again alone on a fresh connection. Framing errors, extra answers, floods
of interim answers or a lost connection drop the connection, and its unanswered requests are
written again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass
from uuid import UUID

import h11

from kanidm_mail_sender.config.settings import ClientConfig
from kanidm_mail_sender.errors import KanidmError, KanidmResponseError, KanidmUnavailable
from kanidm_mail_sender.kanidm.client import USER_AGENT, sent_path, status_error, tls_context

__all__ = ["MarkPipeline", "build_mark_pipeline", "proxied"]

_MAX_BODY = 64 * 1024  # a mark-sent answer is a few bytes; anything huge is not Kanidm
_MAX_HEAD = 16 * 1024
_MAX_INTERIM = 8  # 1xx answers before the real one; an endless stream is an attack
_MAX_TRIES = 3  # writes of one request after lost connections, before its caller is told
_KEEPALIVE_EXPIRY = 5.0  # like httpx: do not reuse a connection idle for longer
_TEMPLATE_ID = UUID(int=0)


class _Broken(Exception):
    """The connection cannot be trusted any more (framing, extra data, interim flood)."""


@dataclass(slots=True)
class _Pending:
    message_id: UUID
    future: asyncio.Future[tuple[int, bytes]]
    tries: int = 0
    alone: bool = False  # ask on its own connection: its answer in a batch was not trusted


class _Stream(asyncio.Protocol):
    """The bytes of one connection, buffered where the scheduler can see them."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.transport: asyncio.WriteTransport | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both can write.
        self.transport = cast("asyncio.WriteTransport", transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def stale(self) -> bool:
        """Bytes or an end arrived while nothing was asked: not reusable (httpcore's check)."""
        return bool(self.buffer) or self.eof

    async def read(self) -> bytes:
        """What has arrived, waiting for something; b"" at the end."""
        while not self.buffer and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass(slots=True)
class _Connection:
    stream: _Stream
    last_used: float


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
        self._headers = [
            ("Host", parts.netloc),
            ("Authorization", f"Bearer {token}"),
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/json"),
            ("Content-Length", "4"),
        ]
        template = self._serialise(_TEMPLATE_ID)
        marker = str(_TEMPLATE_ID).encode()
        self._before_id, _, self._after_id = template.partition(marker)
        # What the reading state machine is told went out: a POST with a 4-byte body. Only its
        # framing matters there, so the fewest headers h11 accepts (it writes them each time).
        self._sent_events = (
            h11.Request(
                method="POST", target="/", headers=[("Host", "k"), ("Content-Length", "4")]
            ),
            h11.Data(data=b"null"),
            h11.EndOfMessage(),
        )
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
            await asyncio.wait([self._driver], timeout=1.0)
        self._drop()
        self._fail([*self._in_flight, *self._queue], "the client is closed")
        self._queue.clear()

    async def _drive(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._next_batch()
            if not batch:
                continue
            self._in_flight = batch
            try:
                await self._exchange(batch)
            except Exception as exc:  # a bug here must not leave callers waiting forever
                self._drop()
                self._fail(batch, f"unexpected error ({exc!r})")
            self._in_flight = []

    def _next_batch(self) -> list[_Pending]:
        """Up to ``max_batch`` waiting requests; a request to be asked alone goes alone."""
        batch: list[_Pending] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue[0]
            if pending.future.done():  # its caller gave up (shutdown)
                self._queue.popleft()
                continue
            if pending.alone and batch:
                break
            batch.append(self._queue.popleft())
            if pending.alone:
                break
        return batch

    def _serialise(self, message_id: UUID) -> bytes:
        """One request exactly as h11 writes it."""
        writer = h11.Connection(h11.CLIENT)
        return b"".join(
            (
                writer.send(self._request(message_id)) or b"",
                writer.send(h11.Data(data=b"null")) or b"",
                writer.send(h11.EndOfMessage()) or b"",
            )
        )

    def _request_bytes(self, message_id: UUID) -> bytes:
        # h11 writes every request alike but for the id, which has a fixed length: its bytes
        # are made once and the id put in (a tenth of the cost of h11 per request).
        return self._before_id + str(message_id).encode() + self._after_id

    def _request(self, message_id: UUID) -> h11.Request:
        return h11.Request(method="POST", target=sent_path(message_id), headers=self._headers)

    async def _exchange(self, batch: list[_Pending]) -> None:
        """Write ``batch``, read its answers; every request ends answered, failed or queued
        again. One deadline covers the whole batch."""
        answers: list[tuple[int, bytes]] = []
        alone = len(batch) == 1 and batch[0].alone
        closing = False
        try:
            async with asyncio.timeout(self._timeout):
                for pending in batch:
                    pending.tries += 1
                opened = self.connections_opened
                connection = await self._connect(fresh=alone)
                # One request on a connection opened for it: no neighbour, nothing earlier.
                alone = len(batch) == 1 and self.connections_opened != opened
                stream = connection.stream
                assert stream.transport is not None
                stream.transport.write(b"".join(self._request_bytes(p.message_id) for p in batch))
                reader = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
                for _ in batch:
                    # The reading state machine needs to know a POST with a body went out,
                    # not which one: the same three events serve every request.
                    for event in self._sent_events:
                        reader.send(event)
                    answers.append(await self._answer(reader, stream))
                    if h11.MUST_CLOSE in (reader.our_state, reader.their_state):
                        closing = True
                        break
                    reader.start_next_cycle()
                if not closing and (reader.trailing_data[0] or stream.buffer):
                    raise _Broken("Kanidm sent more answers than it was asked")
            connection.last_used = asyncio.get_running_loop().time()
        except TimeoutError:
            self._drop()
            self._settle(batch, answers)
            self._fail(batch[len(answers) :], f"Kanidm did not answer within {self._timeout:g} s")
            return
        except (_Broken, h11.ProtocolError) as exc:
            self._drop()
            # Answers read before the stream broke may be shifted by it: none is trusted.
            self._retry(
                batch, f"Kanidm's answer is not HTTP/1.1 as expected ({exc})", KanidmResponseError
            )
            return
        except (OSError, ssl.SSLError, EOFError) as exc:
            self._drop()
            self._settle(batch, answers)
            self._retry(batch[len(answers) :], f"cannot reach Kanidm ({exc or type(exc).__name__})")
            return
        if closing:  # the server ignores what followed; written again, not a failure
            self._drop()
            for pending in batch[len(answers) :]:
                pending.tries -= 1
            self._queue.extendleft(reversed(batch[len(answers) :]))
        self._settle(batch, answers, alone)

    async def _answer(self, reader: h11.Connection, stream: _Stream) -> tuple[int, bytes]:
        """The next final answer on ``reader``: status and body."""
        status = interim = 0
        body = bytearray()
        ended = False
        while True:
            try:
                event = reader.next_event()
            except h11.RemoteProtocolError:
                if ended:  # the peer hung up mid-answer: unreachable, not malformed
                    raise EOFError("the connection closed mid-answer") from None
                raise
            if event is h11.NEED_DATA:
                data = await stream.read()
                ended = not data
                reader.receive_data(data)  # b"" ends a close-delimited body, or errs
                continue
            if isinstance(event, h11.InformationalResponse):
                interim += 1
                if interim > _MAX_INTERIM:
                    raise _Broken(f"more than {_MAX_INTERIM} interim answers")
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise _Broken("answer body too large")
            elif isinstance(event, h11.EndOfMessage):
                if status == 408:
                    # A server's idle timeout answered before our request was read.
                    raise _Broken("a 408 Request Timeout, written before our request was read")
                return status, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the connection closed mid-answer")
            else:
                raise _Broken(f"unexpected {type(event).__name__}")

    def _settle(
        self, batch: list[_Pending], answers: list[tuple[int, bytes]], alone: bool = False
    ) -> None:
        """Hand out the answers that can be trusted; ask the others again, alone."""
        for pending, (status, body) in zip(batch, answers, strict=False):
            if pending.future.done():
                continue
            if status == 200 or alone:
                pending.future.set_result((status, body))
            else:
                pending.alone = True
                pending.tries = 0
                self._queue.appendleft(pending)

    def _retry(
        self,
        pendings: list[_Pending],
        reason: str,
        kind: type[KanidmError] = KanidmUnavailable,
    ) -> None:
        """Write unanswered requests again on a fresh connection, a bounded number of times."""
        again = [p for p in pendings if p.tries < _MAX_TRIES and not p.future.done()]
        self._fail([p for p in pendings if p not in again], reason, kind)
        self._queue.extendleft(reversed(again))

    async def _connect(self, *, fresh: bool) -> _Connection:
        now = asyncio.get_running_loop().time()
        connection = self._connection
        if (
            not fresh
            and connection is not None
            and now - connection.last_used <= _KEEPALIVE_EXPIRY
            and not connection.stream.stale
        ):
            return connection
        self._drop()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, stream = await loop.create_connection(
                    _Stream, self._host, self._port, ssl=self._tls, server_hostname=self._host
                )
        except TimeoutError:
            raise ConnectionError(f"no connection within {self._connect_timeout:g} s") from None
        self.connections_opened += 1
        self._connection = _Connection(stream, now)
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.stream.close()
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
