"""A minimal HTTP/1.1 server on asyncio streams, for the metrics listener and test stand-ins.

It understands exactly what those need: a request line, headers, an optional
``Content-Length`` body, keep-alive, and responses with a fixed body or a chunked stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["HttpServer", "Request", "Response", "serve"]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


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


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return Request(parts[0], parts[1], headers, body)


async def _write_response(writer: asyncio.StreamWriter, response: Response) -> None:
    head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}",
            f"Content-Type: {response.content_type}"]
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    if response.stream is None:
        head.append(f"Content-Length: {len(response.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
    else:
        head.append("Transfer-Encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        async for chunk in response.stream:
            if chunk:
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
    await writer.drain()


class HttpServer:
    """A listening server; ``close()`` also ends the open keep-alive connections."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Start accepting connections."""
        self._server = await asyncio.start_server(self._connection, host, port, ssl=ssl_context)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_accepted += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                try:
                    response = await self._handler(request)
                except Exception as exc:  # a broken stand-in must not kill the listener
                    response = Response(500, repr(exc).encode(), "text/plain")
                await _write_response(writer, response)
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError,
                asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, OSError,
                                     asyncio.CancelledError):
                await writer.wait_closed()

    async def drop_connections(self) -> None:
        """End every open connection but keep listening (a keep-alive timeout, for tests)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
        await self._server.wait_closed()


async def serve(
    handler: Handler, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> HttpServer:
    """Start serving ``handler`` on host:port (0 picks a free port)."""
    server = HttpServer(handler)
    await server.listen(host, port, ssl_context)
    return server
