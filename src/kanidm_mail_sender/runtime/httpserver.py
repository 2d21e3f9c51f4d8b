"""A small HTTP/1.1 server on h11 with a limit on everything, for the metrics listener and
the test stand-ins.

h11 does the framing (request line, headers, Content-Length vs chunked, keep-alive); this
module adds what a listener reachable by anyone needs: a cap on connections, a deadline for
each request and for idle keep-alive, a bound on the request head and body, a deadline on
writes to a client that does not read, 400 for malformed requests, and never a traceback.

A full listener sheds the connection that has waited longest without a complete request
head (idle, or sending one slowly) to take the newcomer: whoever holds every slot open
without asking anything cannot starve a health probe, which asks at once. Only when every
slot is serving a request is the newcomer refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11

from kanidm_mail_sender.logs import get_logger

__all__ = ["HttpServer", "Limits", "Request", "Response", "serve"]

log = get_logger(__name__)

_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Limits:
    """What one listener allows."""

    max_connections: int = 256
    header_timeout: float = 10.0  # a new connection's first request, head and body
    idle_timeout: float = 30.0  # a kept-alive connection's next request
    write_timeout: float = 30.0
    max_head: int = 16384
    max_body: int = 1 << 20  # 0: any request body is refused with 413


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    """A response: ``body`` bytes, or ``stream`` yielding chunks (sent chunked)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """The request cannot be served; answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Connection:
    """One client connection: h11 state plus its stream."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)

    async def _event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(_READ_SIZE)
            self.h11.receive_data(data)  # b"" means EOF, which h11 turns into an event

    async def request(self, within: float) -> Request | None:
        """The next complete request (within ``within`` seconds), None at a clean end."""
        async with asyncio.timeout(within):
            event = await self._event()
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            if not isinstance(event, h11.Request):
                raise _Refused(400, f"unexpected {type(event).__name__}")
            head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head > self.limits.max_head:  # h11 bounds only heads still incomplete
                raise _Refused(431, "request head too large")
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            declared = headers.get("content-length")
            if self.limits.max_body == 0 and (
                (declared is not None and declared != "0") or "transfer-encoding" in headers
            ):
                raise _Refused(413, "this listener takes no request body")
            if declared is not None and int(declared) > self.limits.max_body:
                raise _Refused(413, "request body too large")
            body = bytearray()
            while True:
                part = await self._event()
                if isinstance(part, h11.EndOfMessage):
                    break
                if not isinstance(part, h11.Data):
                    raise _Refused(400, f"unexpected {type(part).__name__}")
                body += part.data
                if len(body) > self.limits.max_body:
                    raise _Refused(413, "request body too large")
            return Request(
                event.method.decode("latin-1"), event.target.decode("latin-1"), headers, bytes(body)
            )

    async def send(self, *events: h11.Event) -> None:
        """Frame ``events`` and write them at once (one TLS record, not one per event)."""
        data = b"".join(self.h11.send(event) or b"" for event in events)
        if data:
            self.writer.write(data)
            async with asyncio.timeout(self.limits.write_timeout):
                await self.writer.drain()

    async def respond(self, response: Response) -> None:
        headers = [("Content-Type", response.content_type), *response.headers.items()]
        if response.stream is None:
            headers.append(("Content-Length", str(len(response.body))))
            head = h11.Response(status_code=response.status, headers=headers)
            body = [h11.Data(data=response.body)] if response.body else []
            await self.send(head, *body, h11.EndOfMessage())
            return
        await self.send(h11.Response(status_code=response.status, headers=headers))
        async for chunk in response.stream:
            if chunk:
                await self.send(h11.Data(data=chunk))
        await self.send(h11.EndOfMessage())

    async def refuse(self, status: int) -> None:
        """Answer ``status`` with a short body and close, if a response may still go out."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status}\n".encode()
        with contextlib.suppress(h11.LocalProtocolError, OSError, TimeoutError):
            await self.send(
                h11.Response(
                    status_code=status,
                    headers=[
                        ("Content-Type", "text/plain"),
                        ("Content-Length", str(len(body))),
                        ("Connection", "close"),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )


class HttpServer:
    """A listening server; ``close()`` also ends the open keep-alive connections."""

    def __init__(self, handler: Handler, limits: Limits | None = None) -> None:
        self._handler = handler
        self.limits = limits or Limits()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The connections waiting for a request head, oldest first (dicts keep order).
        self._waiting: dict[asyncio.Task[None], None] = {}
        self.connections_accepted = 0
        self.connections_refused = 0
        self.connections_shed = 0

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Start accepting connections."""
        self._server = await asyncio.start_server(
            self._connection,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.limits.header_timeout if ssl_context else None,
            limit=self.limits.max_head,
        )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.limits.max_connections and not self._shed_one():
            self.connections_refused += 1
            writer.transport.abort()  # every slot is serving: the descriptor goes back at once
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_accepted += 1
        conn = _Connection(reader, writer, self.limits)
        clean = False
        try:
            await self._serve(conn)
            clean = True
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            if clean:
                await self._close(writer)
            else:  # a peer that stalls or breaks gets no graceful close to stall again
                writer.transport.abort()

    def _shed_one(self) -> bool:
        """Cut the connection that has waited longest for a request head; False if none
        waits. It leaves the budget at once; its task ends on the next turn of the loop."""
        for task in self._waiting:
            del self._waiting[task]
            self._tasks.discard(task)
            task.cancel()
            self.connections_shed += 1
            return True
        return False

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError, asyncio.CancelledError):
            writer.transport.abort()

    async def _serve(self, conn: _Connection) -> None:
        timeout = self.limits.header_timeout
        task = asyncio.current_task()
        assert task is not None
        while True:
            self._waiting[task] = None
            try:
                request = await conn.request(timeout)
            except h11.RemoteProtocolError as exc:
                await conn.refuse(exc.error_status_hint)
                return
            except _Refused as exc:
                await conn.refuse(exc.status)
                return
            except ValueError:  # a Content-Length h11 accepted but int() did not
                await conn.refuse(400)
                return
            finally:
                self._waiting.pop(task, None)
            if request is None:
                return
            try:
                response = await self._handler(request)
            except Exception as exc:  # a broken handler must not kill the listener
                log.error("http.handler_failed", path=request.path[:200], error=repr(exc)[:200])
                response = Response(500, b"internal error\n", "text/plain")
            await conn.respond(response)
            if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                return
            conn.h11.start_next_cycle()
            timeout = self.limits.idle_timeout

    async def drop_connections(self) -> None:
        """End every open connection but keep listening (a keep-alive timeout, for tests)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cancel every connection."""
        assert self._server is not None
        self._server.close()
        await self.drop_connections()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._server.wait_closed()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
) -> HttpServer:
    """Start serving ``handler`` on host:port (0 picks a free port)."""
    server = HttpServer(handler, limits)
    await server.listen(host, port, ssl_context)
    return server
