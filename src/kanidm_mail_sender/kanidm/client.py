"""Kanidm's REST API, the two calls we need: list ready messages and mark one sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import httpx

from kanidm_mail_sender import __version__
from kanidm_mail_sender.config.settings import ClientConfig
from kanidm_mail_sender.errors import (
    ConfigError,
    KanidmAuthError,
    KanidmError,
    KanidmNotFound,
    KanidmResponseError,
    KanidmUnavailable,
)
from kanidm_mail_sender.kanidm.decoding import BodyTooLarge, Decoder
from kanidm_mail_sender.kanidm.readylist import MAX_ENTRY_BYTES, ReadyListParser

__all__ = [
    "READY_PATH",
    "USER_AGENT",
    "KanidmClient",
    "ListLimits",
    "MarkPipeline",
    "build_http_client",
    "sent_path",
    "status_error",
    "tls_context",
]

ALL_PATH = "/scim/v1/Message"
READY_PATH = f"{ALL_PATH}/_ready"
USER_AGENT = f"kanidm-mail-sender/{__version__}"


def sent_path(message_id: UUID) -> str:
    """The mark-sent path; POST is the only method Kanidm's router accepts there."""
    return f"/scim/v1/Message/{message_id}/_sent"


def tls_context(config: ClientConfig) -> ssl.SSLContext:
    """Trust and name checks for Kanidm as the client config asks (system store + ca_path)."""
    context = ssl.create_default_context()
    if config.ca_path is not None:
        try:
            context.load_verify_locations(cafile=str(config.ca_path))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"ca_path {config.ca_path}: cannot load a PEM CA certificate from it ({exc}); "
                "point it at the PEM file of the CA that signed Kanidm's certificate, or "
                "remove the key to trust the system's CAs only"
            ) from None
    if not config.verify_hostnames or not config.verify_ca:
        context.check_hostname = False
    if not config.verify_ca:
        context.verify_mode = ssl.CERT_NONE
    return context


def build_http_client(
    config: ClientConfig,
    token: str,
    *,
    timeout: float = 30,
    max_connections: int = 8,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An httpx client for Kanidm: bearer token, our TLS settings, timeouts on every request."""
    return httpx.AsyncClient(
        base_url=config.base_url,
        verify=tls_context(config),
        timeout=httpx.Timeout(timeout, connect=config.connect_timeout or timeout),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
        transport=transport,
        follow_redirects=False,
    )


def status_error(status: int, body: bytes, what: str) -> KanidmError:
    """The error for a non-200 answer, with what the operator should check."""
    excerpt = body[:200].decode("utf-8", "replace").strip()
    detail = f"{what}: Kanidm answered {status} {excerpt}".rstrip()
    if status == 401:
        return KanidmAuthError(
            f"{detail}; the API token is not accepted: it may have expired or been revoked, "
            "or it is not the token of the mail-sender service account",
            status=status,
        )
    if status == 403:
        return KanidmAuthError(
            f"{detail}; the token lacks the rights: it must be a read-write API token "
            "(--readwrite) of an account in idm_message_senders",
            status=status,
        )
    if status == 404:
        return KanidmNotFound(detail, status=status)
    return KanidmResponseError(detail, status=status)


@dataclass(frozen=True, slots=True)
class ListLimits:
    """Bounds of one poll: Kanidm's total time to send the list, and the list's size."""

    timeout: float = 120.0
    max_bytes: int = 256 << 20


_LIST_HEADERS = {"Accept-Encoding": "gzip"}
_EXCERPT = 4096


class _Budget:
    """Time left for the waits of one request, spent only while waiting on the network."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self.left = seconds

    @contextlib.asynccontextmanager
    async def spend(self) -> AsyncIterator[None]:
        started = self._loop.time()
        try:
            async with asyncio.timeout(max(self.left, 0.0)):
                yield
        finally:
            self.left -= self._loop.time() - started


async def _items(
    response: httpx.Response, budget: _Budget, max_bytes: int
) -> AsyncGenerator[Any, None]:
    """The entries of a ready-list body, decoded and parsed as it arrives."""
    parser = ReadyListParser()
    decoder = Decoder(response.headers.get("content-encoding", ""), limit=max_bytes)
    chunks = _raw(response)
    while True:
        try:
            async with budget.spend():
                chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        if decoder.received + len(chunk) > max_bytes:
            raise BodyTooLarge(f"the body is larger than {max_bytes} bytes")
        for piece in decoder.feed(chunk):
            for item in parser.feed(piece):
                yield item
            await asyncio.sleep(0)  # a large chunk must not hold the loop
    for piece in decoder.flush():
        for item in parser.feed(piece):
            yield item
    for item in parser.feed(b"", final=True):
        yield item


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it came over the wire; a response already read (a transport that
    buffers, such as a test's mock) gives its content in one piece."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.StreamConsumed:
        yield response.content


async def _excerpt(response: httpx.Response) -> bytes:
    """The start of an error body, never the whole of a hostile one."""
    body = bytearray()
    async for chunk in _raw(response):
        body += chunk
        if len(body) >= _EXCERPT:
            break
    return bytes(body[:_EXCERPT])


class MarkPipeline(Protocol):
    """Something that marks messages sent faster than one httpx request each."""

    async def mark_sent(self, message_id: UUID) -> None: ...

    async def aclose(self) -> None: ...


@contextlib.contextmanager
def map_httpx_errors(what: str) -> Iterator[None]:
    """httpx's transport failures as ours, naming ``what`` was being done: the one map from
    httpx's exceptions (the model is httpx's own ``map_httpcore_exceptions``)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise KanidmUnavailable(f"{what}: Kanidm timed out ({exc!r})") from exc
    except httpx.TransportError as exc:
        raise KanidmUnavailable(f"{what}: cannot reach Kanidm ({exc})") from exc


class KanidmClient:
    """Lists ready messages and marks them sent, mapping httpx errors to ours."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        marker: MarkPipeline | None = None,
        limits: ListLimits | None = None,
    ) -> None:
        self._http = http
        self._marker = marker
        self._limits = limits or ListLimits()

    def ready(self) -> AsyncGenerator[Any, None]:
        """Yield each resource of the ready list (or a MalformedMessage for a bad entry) as it
        is parsed off the wire.

        The time spent waiting for Kanidm is bounded for the whole list, not per read, and
        the body's size is bounded before and after decoding; the caller's own time between
        items does not count.
        """
        return self._list(READY_PATH, "listing ready messages")

    def every_message(self) -> AsyncGenerator[Any, None]:
        """Every message Kanidm holds, sent or not, as :meth:`ready` yields them."""
        return self._list(ALL_PATH, "listing all messages")

    async def message(self, message_id: UUID, *, access_check: bool = False) -> Any:
        """One message's resource, sent or not; KanidmNotFound when Kanidm has none.
        ``access_check``: with what this token may do to it (``extAccessCheck``)."""
        what = f"reading message {message_id}"
        body = bytearray()
        params = {"extAccessCheck": "true"} if access_check else None
        with map_httpx_errors(what):
            async with self._http.stream(
                "GET", f"{ALL_PATH}/{message_id}", params=params
            ) as response:
                if response.status_code != 200:
                    raise status_error(response.status_code, await _excerpt(response), what)
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ENTRY_BYTES:
                        raise KanidmResponseError(f"{what}: larger than 1 MiB", status=200)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise KanidmResponseError(f"{what}: not JSON ({exc})", status=200) from None

    async def _list(self, path: str, what: str) -> AsyncGenerator[Any, None]:
        limits = self._limits
        loop = asyncio.get_running_loop()
        budget = _Budget(loop, limits.timeout)
        try:
            with map_httpx_errors(what):
                async with contextlib.AsyncExitStack() as stack:
                    async with budget.spend():
                        response = await stack.enter_async_context(
                            self._http.stream("GET", path, headers=_LIST_HEADERS)
                        )
                    if response.status_code != 200:
                        async with budget.spend():
                            body = await _excerpt(response)
                        raise status_error(response.status_code, body, what)
                    items = _items(response, budget, limits.max_bytes)
                    async with contextlib.aclosing(items) as entries:
                        async for item in entries:
                            yield item
        except TimeoutError as exc:
            raise KanidmUnavailable(
                f"{what}: Kanidm did not send the whole list within {limits.timeout:g} s "
                "(http_list_timeout_seconds)"
            ) from exc
        except BodyTooLarge as exc:
            raise KanidmResponseError(
                f"{what}: {exc} (http_list_max_mib); raise it if your queue is really that big",
                status=200,
            ) from exc
        except ValueError as exc:
            raise KanidmResponseError(f"{what}: {exc}", status=200) from exc

    async def count_ready(self) -> tuple[int, UUID | None]:
        """How many messages are ready, and the id of the first (for ``--check``)."""
        count, first = 0, None
        async for item in self.ready():
            count += 1
            if first is None and isinstance(item, dict):
                with contextlib.suppress(ValueError, TypeError):
                    first = UUID(str(item.get("id")))
        return count, first

    async def mark_sent(self, message_id: UUID) -> None:
        """Tell Kanidm the message was relayed; success is exactly 200."""
        if self._marker is not None:
            await self._marker.mark_sent(message_id)
            return
        what = f"marking message {message_id} sent"
        with map_httpx_errors(what):
            response = await self._http.post(
                sent_path(message_id),
                content=b"null",
                headers={"Content-Type": "application/json"},
            )
        if response.status_code != 200:
            raise status_error(response.status_code, response.content, what)

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._marker is not None:
            await self._marker.aclose()
        await self._http.aclose()
