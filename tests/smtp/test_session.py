"""SMTP PIPELINING (RFC 2920) and the session's reply reader, against scripted TLS peers.

The peer is a real implicit-TLS server on loopback whose answers each test scripts: all
replies in one segment, dripped byte by byte, stale or extra replies, garbage, a close in the
middle of an answer, a stall after 354. Each test asserts what reached the peer (every
write the client made) and what the caller got.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from kanidm_mail_sender.config.relays import parse_relay_url
from kanidm_mail_sender.core.replies import Receipt
from kanidm_mail_sender.errors import (
    DeliveryDeferred,
    DeliveryRejected,
    LinkExpired,
    RelayUnavailable,
)
from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.smtp.relay import SmtpRelay, build_tls_context
from kanidm_mail_sender.smtp.session import (
    MAX_LINE,
    Reply,
    SessionClosed,
    SessionGarbled,
    SmtpSession,
)
from tests.helpers import envelope

EHLO = b"250-peer.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
LOCKSTEP_EHLO = b"250-peer.test\r\n250 8BITMIME\r\n"


@dataclass
class Connection:
    """What one client connection wrote, each read of the peer apart."""

    reads: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.reads)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Connection, int], Awaitable[None]]


class ScriptedPeer:
    """An implicit-TLS SMTP peer: greeting and EHLO, then the test's script per connection."""

    def __init__(self, certs: Certs, script: Script, ehlo: bytes = EHLO) -> None:
        self._certs = certs
        self._script = script
        self._ehlo = ehlo
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"smtps://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self._certs.server_context()
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = Connection()
        self.connections.append(connection)
        try:
            writer.write(b"220 peer.test ESMTP\r\n")
            await reader.readline()  # EHLO
            writer.write(self._ehlo)
            await self._script(reader, writer, connection, len(self.connections))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)


async def read_some(reader: asyncio.StreamReader, connection: Connection) -> bytes:
    data = await reader.read(65536)
    if not data:
        raise asyncio.IncompleteReadError(b"", None)
    connection.reads.append(data)
    return data


async def read_until(reader: asyncio.StreamReader, connection: Connection, end: bytes) -> None:
    while not connection.data.endswith(end):
        await read_some(reader, connection)


async def well_behaved(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: Connection, n: int
) -> None:
    """Answers like a pipelining relay: the group's three replies together, then 250."""
    while True:
        while not connection.data.endswith((b"DATA\r\n", b"QUIT\r\n")):
            await read_some(reader, connection)
        if connection.data.endswith(b"QUIT\r\n"):
            writer.write(b"221 bye\r\n")
            return
        writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        await read_until(reader, connection, b"\r\n.\r\n")
        writer.write(b"250 2.0.0 Ok: queued as Q%d\r\n" % n)


@pytest.fixture
async def peers(certs: Certs) -> AsyncIterator[Callable[..., Awaitable[ScriptedPeer]]]:
    started: list[ScriptedPeer] = []
    relays: list[SmtpRelay] = []

    async def create(script: Script, ehlo: bytes = EHLO) -> ScriptedPeer:
        peer = ScriptedPeer(certs, script, ehlo)
        await peer.start()
        started.append(peer)
        return peer

    create.relays = relays  # type: ignore[attr-defined]
    yield create
    for relay in relays:
        await relay.close()
    for peer in started:
        await peer.stop()


def relay_for(peer: ScriptedPeer, certs: Certs, peers: object, **kwargs: object) -> SmtpRelay:
    relay = SmtpRelay(
        parse_relay_url(peer.url),
        tls_context=build_tls_context(certs.ca_path),
        helo_name="sender.test",
        connect_timeout=5,
        command_timeout=kwargs.pop("command_timeout", 5),  # type: ignore[arg-type]
        max_connections=1,
    )
    peers.relays.append(relay)  # type: ignore[attr-defined]
    return relay


async def test_the_three_commands_go_in_one_write_and_the_message_in_another(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    peer = await peers(well_behaved)
    relay = relay_for(peer, certs, peers)
    sent = envelope()
    reply = await relay.send(sent)
    assert reply == Receipt("2.0.0 Ok: queued as Q1", "Q1")
    (connection,) = peer.connections
    group, body = connection.reads
    assert group == (
        b"MAIL FROM:<idm@example.com> SIZE=%d\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n"
        % len(sent.data)
    )
    assert body.endswith(b"\r\n.\r\n")
    assert body[: -len(b".\r\n")] == sent.data


async def test_without_the_extension_one_command_per_round_trip(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def lockstep(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        for answer in (b"250 Ok\r\n", b"250 Ok\r\n", b"354 go\r\n"):
            await read_some(reader, conn)
            writer.write(answer)
        await read_until(reader, conn, b"\r\n.\r\n")
        writer.write(b"250 queued\r\n")
        await read_some(reader, conn)

    peer = await peers(lockstep, ehlo=LOCKSTEP_EHLO)
    await relay_for(peer, certs, peers).send(envelope())
    reads = peer.connections[0].reads
    assert [read.split(b":")[0] for read in reads[:3]] == [b"MAIL FROM", b"RCPT TO", b"DATA\r\n"]


async def test_replies_dripped_byte_by_byte_are_read_in_order(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def drip(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        for byte in b"250-Ok\r\n250 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.001)
        await read_until(reader, conn, b"\r\n.\r\n")
        for byte in b"250 2.0.0 dripped\r\n":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.001)
        await read_some(reader, conn)

    peer = await peers(drip)
    assert await relay_for(peer, certs, peers).send(envelope()) == Receipt("2.0.0 dripped", None)


async def test_a_refused_recipient_is_that_recipients_failure_and_the_session_goes_on(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def refuse_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        writer.write(b"250 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n")
        await read_until(reader, conn, b"RSET\r\n")
        writer.write(b"250 Ok\r\n")
        await well_behaved(reader, writer, conn, n)

    peer = await peers(refuse_first)
    relay = relay_for(peer, certs, peers)
    with pytest.raises(DeliveryRejected, match=r"the recipient: 550 5\.1\.1 no such user"):
        await relay.send(envelope("gone@example.com"))
    assert await relay.send(envelope()) == Receipt("2.0.0 Ok: queued as Q1", "Q1")
    assert len(peer.connections) == 1  # the refusal did not cost the connection
    assert b"\r\n.\r\n" not in peer.connections[0].data.split(b"RSET")[0]


async def test_a_354_after_a_refusal_is_hung_up_on_not_fed(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def lenient(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        writer.write(b"250 Ok\r\n550 5.1.1 no such user\r\n354 go ahead anyway\r\n")
        await read_some(reader, conn)  # the client's side closes

    peer = await peers(lenient)
    with pytest.raises(DeliveryRejected, match="550"):
        await relay_for(peer, certs, peers).send(envelope("gone@example.com"))
    assert b"\r\n.\r\n" not in peer.connections[0].data


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"250 Ok\r\n250 Ok\r\n354 go\r\n250 extra\r\n", "nobody asked for"),
        (b"HTTP/1.1 400 Bad Request\r\n", "not a reply"),
        (b"250-Ok\r\n550 mixed codes\r\n", "not a reply"),
        (b"25O Ok\r\n", "not a reply"),
        (b"250" + b"x" * (MAX_LINE + 10), "longer than"),
    ],
)
async def test_an_answer_that_is_not_smtp_defers_and_a_fresh_connection_delivers(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs, answer: bytes, why: str
) -> None:
    async def hostile_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        if n == 1:
            await read_until(reader, conn, b"DATA\r\n")
            writer.write(answer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await read_some(reader, conn)
            return
        await well_behaved(reader, writer, conn, n)

    peer = await peers(hostile_first)
    relay = relay_for(peer, certs, peers)
    with pytest.raises(DeliveryDeferred, match=why) as caught:
        await relay.send(envelope())
    assert caught.value.transport
    assert b"\r\n.\r\n" not in peer.connections[0].data  # no message went out after garbage
    assert await relay.send(envelope()) == Receipt("2.0.0 Ok: queued as Q2", "Q2")


async def test_a_stale_reply_while_idle_retires_the_pooled_connection(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def stale_after_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        writer.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        await read_until(reader, conn, b"\r\n.\r\n")
        writer.write(b"250 2.0.0 Ok: queued as Q%d\r\n" % n)
        if n == 1:
            await asyncio.sleep(0.05)
            writer.write(b"421 4.4.2 idle timeout\r\n")  # unasked, while the client idles
            await asyncio.sleep(0.2)
            return
        await well_behaved(reader, writer, conn, n)

    peer = await peers(stale_after_first)
    relay = relay_for(peer, certs, peers)
    await relay.send(envelope())
    await asyncio.sleep(0.15)
    # The 421 must not be taken as the next MAIL's answer: the next mail goes on a new one.
    assert await relay.send(envelope()) == Receipt("2.0.0 Ok: queued as Q2", "Q2")
    assert len(peer.connections) == 2
    assert peer.connections[0].data.count(b"MAIL FROM") == 1


async def test_a_close_in_the_middle_of_the_answers_defers_and_the_next_goes_fresh(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def close_mid_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        if n == 2:
            await read_until(reader, conn, b"DATA\r\n")
            writer.write(b"250 Ok\r\n250 2.1")  # and gone
            await writer.drain()
            return
        await well_behaved(reader, writer, conn, n)

    peer = await peers(close_mid_answer)
    relay = relay_for(peer, certs, peers)
    first = await relay.send(envelope())
    relay._idle = [(session, 0.0) for session, _ in relay._idle]  # too old: a fresh one
    assert first == Receipt("2.0.0 Ok: queued as Q1", "Q1")
    with pytest.raises(DeliveryDeferred, match="closed the connection during mail"):
        await relay.send(envelope())
    assert await relay.send(envelope()) == Receipt("2.0.0 Ok: queued as Q3", "Q3")


async def test_a_reused_connection_dropped_before_its_answers_is_retried_once_fresh(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def one_mail_then_silence(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        if n == 1:
            await read_until(reader, conn, b"DATA\r\n")
            writer.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
            await read_until(reader, conn, b"\r\n.\r\n")
            writer.write(b"250 2.0.0 Ok: queued as Q1\r\n")
            await read_some(reader, conn)  # the next group: hang up without a word
            return
        await well_behaved(reader, writer, conn, n)

    peer = await peers(one_mail_then_silence)
    relay = relay_for(peer, certs, peers)
    await relay.send(envelope())
    assert await relay.send(envelope()) == Receipt("2.0.0 Ok: queued as Q2", "Q2")
    assert len(peer.connections) == 2


async def test_a_stall_after_the_message_ends_in_the_command_timeout(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def stall(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        writer.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        await read_until(reader, conn, b"\r\n.\r\n")
        await asyncio.Event().wait()  # never answers the dot: only our timeout can end it

    peer = await peers(stall)
    relay = relay_for(peer, certs, peers, command_timeout=0.3)
    with pytest.raises(DeliveryDeferred, match="did not answer data in time"):
        await relay.send(envelope())
    assert peer.connections[0].data.endswith(b"\r\n.\r\n")  # the stall came after the dot


async def test_a_link_that_expires_during_the_group_is_never_mailed(
    peers: Callable[..., Awaitable[ScriptedPeer]], certs: Certs
) -> None:
    async def slow_group(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        await asyncio.sleep(0.3)  # a slow relay: the link expires meanwhile
        writer.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        with contextlib.suppress(asyncio.IncompleteReadError):
            await read_some(reader, conn)

    peer = await peers(slow_group)
    relay = relay_for(peer, certs, peers)
    with pytest.raises(LinkExpired):
        await relay.send(envelope(), not_after=time.time() + 0.15)
    await asyncio.sleep(0.1)
    assert b"\r\n.\r\n" not in peer.connections[0].data
    assert relay._idle == []  # hung up: the transaction is void


class FakeTransport(asyncio.WriteTransport):
    """Records writes; closing it is all the session may do to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def session_on_fake() -> tuple[SmtpSession, FakeTransport]:
    transport = FakeTransport()
    session = SmtpSession({"pipelining": ""}, timeout=1)
    session.connection_made(transport)
    return session, transport


@pytest.mark.parametrize(
    ("chunks", "owed", "replies"),
    [
        ([b"250 Ok\r\n"], 1, [Reply(250, "Ok")]),
        ([b"250 Ok\n"], 1, [Reply(250, "Ok")]),  # a bare LF ends a line too
        ([b"250\r\n"], 1, [Reply(250, "")]),
        ([b"250-a\r\n250-b\r\n250 c\r\n"], 1, [Reply(250, "a\nb\nc")]),
        ([b"25", b"0 O", b"k\r", b"\n"], 1, [Reply(250, "Ok")]),
        ([b"250 a\r\n354 b\r\n"], 2, [Reply(250, "a"), Reply(354, "b")]),
        ([b"550 5.1.1 \xff\r\n"], 1, [Reply(550, "5.1.1 \udcff")]),
    ],
)
async def test_replies_are_read(chunks: list[bytes], owed: int, replies: list[Reply]) -> None:
    session, _ = session_on_fake()
    waiting = asyncio.ensure_future(session.send(b"X\r\n" * owed, owed))
    await asyncio.sleep(0)
    for chunk in chunks:
        session.data_received(chunk)
    assert await waiting == replies
    assert session.usable


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"250 Ok\r\n250 again\r\n", "nobody asked for"),
        (b"2500 Ok\r\n", "not a reply"),
        (b"199 Ok\r\n", "not a reply"),
        (b"650 Ok\r\n", "not a reply"),
        (b"abc\r\n", "not a reply"),
        (b"250-a\r\n354 b\r\n", "not a reply"),
        (b"250-x\r\n" * 70, "not a reply"),
    ],
)
async def test_what_is_not_a_reply_fails_the_session(data: bytes, error: str) -> None:
    session, transport = session_on_fake()
    waiting = asyncio.ensure_future(session.send(b"NOOP\r\n", 1))
    await asyncio.sleep(0)
    session.data_received(data)
    with contextlib.suppress(SessionGarbled):
        await waiting
    assert not session.usable
    assert transport.closed
    with pytest.raises(SessionGarbled, match=error):
        await session.send(b"NOOP\r\n", 1)


async def test_unread_bytes_or_an_eof_make_a_session_unusable() -> None:
    session, _ = session_on_fake()
    session.data_received(b"25")  # half a line nobody asked for
    assert not session.usable
    session, _ = session_on_fake()
    session.eof_received()
    assert not session.usable
    with pytest.raises(SessionClosed):
        await session.send(b"NOOP\r\n", 1)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"421 4.3.2 shutting down\r\n", RelayUnavailable),
        (b"250 Ok\r\n550 5.1.1 no such user\r\n", DeliveryRejected),
    ],
)
async def test_a_refusal_then_a_hang_up_is_taken_at_its_word(
    peers: Callable[..., Awaitable[ScriptedPeer]],
    certs: Certs,
    answer: bytes,
    error: type[Exception],
) -> None:
    async def refuse_and_go(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, n: int
    ) -> None:
        await read_until(reader, conn, b"DATA\r\n")
        writer.write(answer)
        await writer.drain()

    peer = await peers(refuse_and_go)
    with pytest.raises(error, match=answer.split(b"\r\n")[-2].decode()[:3]):
        await relay_for(peer, certs, peers).send(envelope())
    assert b"\r\n.\r\n" not in peer.connections[0].data
