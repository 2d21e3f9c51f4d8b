"""A Kanidm-compatible HTTPS stand-in for the message queue endpoints, with fault injection.

It speaks the REST contract the mail sender uses (``GET /scim/v1/Message/_ready``,
``POST /scim/v1/Message/{id}/_sent``, ``GET /scim/v1/Message/{id}``) with Kanidm's JSON shapes,
status codes and error bodies.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from kanidm_mail_sender.runtime.httpserver import HttpServer, Limits, Request, Response, serve

__all__ = ["KanidmStandIn", "StoredMessage"]

_ALPHABET = "abcdefghjkpqrstuvwxyz0123456789"
_MESSAGE_PREFIX = "/scim/v1/Message/"
# A test peer, not a public listener: a client reading a long list slowly (behind a slow
# relay) must not be cut off.
_LIMITS = Limits(header_timeout=60, idle_timeout=60, write_timeout=600)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def intent_id() -> str:
    """An id shaped like Kanidm's credential-update intent ids."""
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(5)) for _ in range(4))


@dataclass
class StoredMessage:
    """One queue entry as the stand-in keeps it."""

    id: UUID
    template: Any
    destinations: list[str]
    send_after: datetime
    delete_after: datetime
    sent_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        """The entry as Kanidm serialises it."""
        body: dict[str, Any] = {
            "schemas": [],
            "id": str(self.id),
            "class": ["object", "outbound_message"],
            "delete_after": _rfc3339(self.delete_after),
            "mail_destination": [
                {"primary": i == 0, "value": d} for i, d in enumerate(self.destinations)
            ],
            "message_template": self.template,
            "send_after": _rfc3339(self.send_after),
        }
        if self.sent_at is not None:
            body["sent_at"] = _rfc3339(self.sent_at)
        body.update(self.extra)
        return body


@dataclass
class Faults:
    """Scripted misbehaviour; each list is consumed one entry per request."""

    list_statuses: list[int] = field(default_factory=list)
    mark_statuses: list[int] = field(default_factory=list)
    list_delay: float = 0.0
    mark_delay: float = 0.0
    read_only: bool = False
    # Hostile list bodies: raw bytes put between the real entries, before the body, and
    # the body dripped a few bytes at a time, or gzip-compressed (with padding after it).
    list_raw_entries: list[bytes] = field(default_factory=list)
    list_prefix: bytes = b""
    list_drip: float = 0.0
    list_gzip: bool = False
    list_gzip_padding: int = 0


SENDER_ACCOUNT = UUID("00000000-0000-4000-8000-00000000a11c")  # the token's service account
_SEARCHABLE = (
    "class",
    "delete_after",
    "mail_destination",
    "message_template",
    "send_after",
    "sent_at",
    "uuid",
)

_ERROR_BODIES = {
    401: b'"notauthenticated"',
    403: b'"accessdenied"',
    404: b'"nomatchingentries"',
    500: b'"resourcelimit"',
}


def _language(tag: str | None) -> dict[str, str]:
    return {} if tag is None else {"language": tag}


async def _drip(body: AsyncIterator[bytes], delay: float) -> AsyncIterator[bytes]:
    async for chunk in body:
        for start in range(0, len(chunk), 8):
            yield chunk[start : start + 8]
            await asyncio.sleep(delay)


async def _gzip(body: AsyncIterator[bytes], padding: int) -> AsyncIterator[bytes]:
    """The body gzip-compressed; ``padding`` bytes of spaces after it make it a bomb (JSON
    allows whitespace at the end)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    async for chunk in body:
        yield packer.compress(chunk)
    block = b" " * (1 << 20)
    for _ in range(padding >> 20):
        yield packer.compress(block)
    yield packer.flush()


class KanidmStandIn:
    """The queue, its HTTPS listener, and counters a test can assert on."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.messages: dict[UUID, StoredMessage] = {}
        self.faults = Faults()
        self.mark_calls: Counter[UUID] = Counter()
        self.list_calls = 0
        self._sent_count = 0
        self._server: HttpServer | None = None
        self.url = ""

    # -- the queue -------------------------------------------------------------------------

    def _add(self, template: Any, destinations: list[str], **extra: Any) -> UUID:
        now = datetime.now(UTC) - timedelta(seconds=1)
        message = StoredMessage(
            uuid4(), template, destinations, now, now + timedelta(days=7), extra=extra
        )
        self.messages[message.id] = message
        return message.id

    def queue_test_message(
        self,
        to: str | list[str],
        display_name: str = "Ellie Example",
        *,
        language: str | None = None,
    ) -> UUID:
        """Queue a ``TestMessageV1``; ``language``: the attribute a Kanidm may add one day."""
        targets = [to] if isinstance(to, str) else to
        template = {"TestMessageV1": {"display_name": display_name}}
        return self._add(template, targets, **_language(language))

    def queue_credential_reset(
        self,
        to: str | list[str],
        display_name: str = "Alice Example",
        *,
        expires_in: float = 3600,
        intent: str | None = None,
        language: str | None = None,
    ) -> UUID:
        """Queue a ``CredentialResetV1``; a negative ``expires_in`` makes it already expired."""
        targets = [to] if isinstance(to, str) else to
        expiry = int((datetime.now(UTC) + timedelta(seconds=expires_in)).timestamp())
        template = {
            "CredentialResetV1": {
                "display_name": display_name,
                "intent_id": intent or intent_id(),
                "expiry_time": expiry,
            }
        }
        return self._add(template, targets, **_language(language))

    def queue_raw(self, template: Any, destinations: list[str]) -> UUID:
        """Queue an entry with any template value (unknown variants, malformed shapes)."""
        return self._add(template, destinations)

    def clear(self) -> None:
        """Forget every message and counter (the benchmark reuses one stand-in)."""
        self.messages.clear()
        self.mark_calls.clear()
        self._sent_count = 0

    def unsent_count(self) -> int:
        """How many messages are not marked sent yet; O(1), for polling loops."""
        return len(self.messages) - self._sent_count

    def unsent(self) -> list[UUID]:
        """Ids not yet marked sent."""
        return [m.id for m in self.messages.values() if m.sent_at is None]

    def sent(self) -> list[UUID]:
        """Ids marked sent."""
        return [m.id for m in self.messages.values() if m.sent_at is not None]

    # -- HTTP ------------------------------------------------------------------------------

    async def start(
        self, ssl_context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0
    ) -> str:
        """Listen on host:port over TLS; returns the base URL."""
        self._server = await serve(
            self._handle, host, port, ssl_context=ssl_context, limits=_LIMITS
        )
        self.url = f"https://{host}:{self._server.port}"
        return self.url

    @property
    def connections_accepted(self) -> int:
        """HTTPS connections accepted since start."""
        return self._server.connections_accepted if self._server is not None else 0

    async def drop_connections(self) -> None:
        """Close every open keep-alive connection, as a server's idle timeout would."""
        if self._server is not None:
            await self._server.drop_connections()

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def _handle(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(presented, self.token):
            return Response(401, _ERROR_BODIES[401], headers={"WWW-Authenticate": "Bearer"})
        path = request.path.split("?", 1)[0]
        if path == _MESSAGE_PREFIX.rstrip("/") and request.method == "GET":
            return Response(200, stream=self._stream(list(self.messages.values())))
        if not path.startswith(_MESSAGE_PREFIX):
            return Response(404, b"Route not found", "text/plain")
        rest = path[len(_MESSAGE_PREFIX) :]
        if rest == "_ready" and request.method == "GET":
            return await self._ready()
        if rest.endswith("/_sent"):
            if request.method != "POST":
                return Response(405, b"", "text/plain")
            try:
                message_id = UUID(rest.removesuffix("/_sent"))
            except ValueError:
                return Response(400, b"Invalid URL: bad UUID", "text/plain")
            return await self._mark(message_id)
        if request.method == "GET":
            try:
                found = self.messages.get(UUID(rest))
            except ValueError:
                found = None
            if found is None:
                return Response(404, _ERROR_BODIES[404])
            resource = found.resource()
            if "extAccessCheck=true" in request.path.partition("?")[2].split("&"):
                resource["extAccessCheck"] = self._access()
            return Response(200, json.dumps(resource).encode())
        return Response(405, b"", "text/plain")

    async def _ready(self) -> Response:
        self.list_calls += 1
        if self.faults.list_delay:
            await asyncio.sleep(self.faults.list_delay)
        if self.faults.list_statuses:
            status = self.faults.list_statuses.pop(0)
            return Response(status, _ERROR_BODIES.get(status, b'"error"'))
        now = datetime.now(UTC)
        ready = [m for m in self.messages.values() if m.sent_at is None and m.send_after < now]
        body = self._stream(ready)
        faults = self.faults
        if faults.list_drip:
            body = _drip(body, faults.list_drip)
        if faults.list_gzip:
            body = _gzip(body, faults.list_gzip_padding)
            return Response(200, stream=body, headers={"Content-Encoding": "gzip"})
        return Response(200, stream=body)

    async def _stream(self, ready: list[StoredMessage]) -> AsyncIterator[bytes]:
        raw = list(self.faults.list_raw_entries)
        yield self.faults.list_prefix + b'{"schemas":[],"totalResults":%d,"resources":[' % len(
            ready
        )
        for start in range(0, len(ready), 256):
            batch = ready[start : start + 256]
            prefix = b"," if start else b""
            yield prefix + b",".join(json.dumps(m.resource()).encode() for m in batch)
            if raw:  # a hostile entry between the real ones
                yield b"," + raw.pop(0)
            await asyncio.sleep(0)
        comma = bool(ready)
        for entry in raw:
            yield (b"," if comma else b"") + entry
            comma = True
        yield b"]}"

    def _access(self) -> dict[str, Any]:
        """A sender's effective access to a message, as Kanidm's ``extAccessCheck`` gives it
        (a read-only token's scope denies every modify)."""
        modify: Any = "Deny" if self.faults.read_only else {"Allow": ["sent_at"]}
        return {
            "ident": str(SENDER_ACCOUNT),
            "delete": False,
            "search": {"Allow": sorted(_SEARCHABLE)},
            "modifyPresent": modify,
            "modifyRemove": modify,
        }

    async def _mark(self, message_id: UUID) -> Response:
        self.mark_calls[message_id] += 1
        if self.faults.mark_delay:
            await asyncio.sleep(self.faults.mark_delay)
        status = self.faults.mark_statuses.pop(0) if self.faults.mark_statuses else 200
        if status != 200:  # a scripted 200 is the normal answer
            return Response(status, _ERROR_BODIES.get(status, b'"error"'))
        message = self.messages.get(message_id)
        if message is None:  # Kanidm looks the entry up before it checks access
            return Response(404, _ERROR_BODIES[404])
        if self.faults.read_only:
            return Response(403, _ERROR_BODIES[403])
        if message.sent_at is None:
            self._sent_count += 1
        message.sent_at = datetime.now(UTC)
        return Response(200, b"null")
