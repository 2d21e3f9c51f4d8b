"""The pipelined mark-sent client, against the HTTPS stand-in and a scripted TLS server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID, uuid4

import pytest

from kanidm_mail_sender import __version__
from kanidm_mail_sender.config.settings import ClientConfig
from kanidm_mail_sender.errors import (
    KanidmAuthError,
    KanidmNotFound,
    KanidmResponseError,
    KanidmUnavailable,
)
from kanidm_mail_sender.kanidm.pipeline import MarkPipeline, build_mark_pipeline, proxied
from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from tests.helpers import TOKEN

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def pipeline_for(url: str, certs: Certs | None, timeout: float = 5) -> MarkPipeline:
    config = ClientConfig(uri=url, ca_path=certs.ca_path if certs else None)
    return build_mark_pipeline(config, TOKEN, timeout=timeout)


@pytest.fixture
async def pipeline(kanidm: KanidmStandIn, certs: Certs) -> AsyncIterator[MarkPipeline]:
    marker = pipeline_for(kanidm.url, certs)
    yield marker
    await marker.aclose()


async def test_concurrent_marks_share_one_connection(
    kanidm: KanidmStandIn, pipeline: MarkPipeline
) -> None:
    ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(300)]
    await asyncio.gather(*(pipeline.mark_sent(i) for i in ids))
    assert sorted(kanidm.sent()) == sorted(ids)
    assert set(kanidm.mark_calls.values()) == {1}
    assert pipeline.connections_opened == 1
    assert kanidm.connections_accepted == 1


async def test_each_answer_reaches_its_own_caller(
    kanidm: KanidmStandIn, pipeline: MarkPipeline
) -> None:
    first, last = kanidm.queue_test_message("a@example.com"), kanidm.queue_test_message("b@x.y")
    unknown = uuid4()
    results = await asyncio.gather(
        pipeline.mark_sent(first),
        pipeline.mark_sent(unknown),
        pipeline.mark_sent(last),
        return_exceptions=True,
    )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], KanidmNotFound)
    assert str(unknown) in str(results[1])
    assert sorted(kanidm.sent()) == sorted([first, last])


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, KanidmResponseError), (401, KanidmAuthError), (403, KanidmAuthError)],
)
async def test_error_statuses_map_to_our_errors(
    kanidm: KanidmStandIn, pipeline: MarkPipeline, status: int, error: type[Exception]
) -> None:
    """A refusal in a batch is only believed when the request, asked again alone, gets it
    too: the answer of a pipelined request could belong to a neighbour."""
    failing, fine = kanidm.queue_test_message("a@x.y"), kanidm.queue_test_message("b@x.y")
    kanidm.faults.mark_statuses = [status, 200, status]
    results = await asyncio.gather(
        pipeline.mark_sent(failing), pipeline.mark_sent(fine), return_exceptions=True
    )
    assert type(results[0]) is error
    assert str(status) in str(results[0])
    assert results[1] is None
    assert kanidm.sent() == [fine]
    assert (kanidm.mark_calls[failing], kanidm.mark_calls[fine]) == (2, 1)


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    kanidm: KanidmStandIn, pipeline: MarkPipeline
) -> None:
    before, after = kanidm.queue_test_message("a@x.y"), kanidm.queue_test_message("b@x.y")
    await pipeline.mark_sent(before)
    await kanidm.drop_connections()
    await asyncio.sleep(0.05)
    await pipeline.mark_sent(after)
    assert sorted(kanidm.sent()) == sorted([before, after])
    assert kanidm.mark_calls[after] == 1
    assert pipeline.connections_opened == 2


async def test_a_silent_kanidm_times_out_and_the_next_mark_reconnects(
    kanidm: KanidmStandIn, certs: Certs
) -> None:
    marker = pipeline_for(kanidm.url, certs, timeout=0.2)
    message = kanidm.queue_test_message("a@x.y")
    kanidm.faults.mark_delay = 1.0
    with pytest.raises(KanidmUnavailable, match=r"did not answer within 0\.2 s"):
        await marker.mark_sent(message)
    kanidm.faults.mark_delay = 0
    await marker.mark_sent(message)
    await marker.aclose()
    assert kanidm.sent() == [message]
    assert marker.connections_opened == 2


async def test_unreachable_and_untrusted_kanidm_are_unavailable(
    kanidm: KanidmStandIn, certs: Certs
) -> None:
    untrusted = pipeline_for(kanidm.url, None)
    with pytest.raises(KanidmUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusted.mark_sent(uuid4())
    await untrusted.aclose()
    assert not kanidm.mark_calls
    url = kanidm.url
    await kanidm.stop()
    closed = pipeline_for(url, certs)
    with pytest.raises(KanidmUnavailable, match="cannot reach Kanidm"):
        await closed.mark_sent(uuid4())
    await closed.aclose()


async def test_marks_after_close_fail_cleanly(pipeline: MarkPipeline) -> None:
    await pipeline.aclose()
    with pytest.raises(KanidmUnavailable, match="closed"):
        await pipeline.mark_sent(uuid4())


# -- a scripted server, for what the stand-in never does --------------------------------------


@pytest.fixture
async def scripted(certs: Certs) -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> str:
        count = [0]

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            count[0] += 1
            try:
                await script(reader, writer, count[0])
            finally:
                writer.close()

        server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=certs.server_context())
        servers.append(server)
        return f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(4)
    return head.decode(), body


async def test_requests_are_exactly_what_kanidm_expects(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    seen: list[tuple[str, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull")
        await writer.drain()
        await reader.read()

    url = await scripted(script)
    marker = pipeline_for(url, certs)
    message = UUID("0a9318dc-920f-4944-9ce4-91b4322b5dad")
    await marker.mark_sent(message)
    await marker.aclose()
    head, body = seen[0]
    lines = head.split("\r\n")
    assert lines[0] == f"POST /scim/v1/Message/{message}/_sent HTTP/1.1"
    assert f"Host: {url.removeprefix('https://')}" in lines
    assert f"Authorization: Bearer {TOKEN}" in lines
    assert "Content-Type: application/json" in lines
    assert "Content-Length: 4" in lines
    assert f"User-Agent: kanidm-mail-sender/{__version__}" in lines
    assert body == b"null"


async def test_interim_chunked_and_closing_answers(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    """100 Continue is skipped, chunked bodies are read, and what follows a
    ``Connection: close`` answer is written again on a new connection."""
    handled: list[str] = []

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        if number == 1:
            for _ in range(3):  # all three are pipelined on the first connection
                handled.append((await read_request(reader))[0].split(" ")[1])
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n2\r\nnu\r\n2\r\nll\r\n0\r\n\r\n"
            )
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnull")
            await writer.drain()
            return
        handled.append((await read_request(reader))[0].split(" ")[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull")
        await writer.drain()
        await reader.read()

    url = await scripted(script)
    marker = pipeline_for(url, certs)
    ids = [uuid4() for _ in range(3)]
    await asyncio.gather(*(marker.mark_sent(i) for i in ids))
    await marker.aclose()
    assert marker.connections_opened == 2
    assert handled == [f"/scim/v1/Message/{i}/_sent" for i in [*ids, ids[2]]]


async def test_a_peer_that_is_not_http_is_a_response_error(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"220 smtp.example.com ESMTP\r\n\r\n")
        await writer.drain()

    marker = pipeline_for(await scripted(script), certs)
    with pytest.raises(KanidmResponseError, match=r"not HTTP/1\.1"):
        await marker.mark_sent(uuid4())
    await marker.aclose()


def test_proxies_from_the_environment_turn_pipelining_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not proxied("https://idm.example.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")
    assert proxied("https://idm.example.com")
    monkeypatch.setenv("NO_PROXY", "idm.example.com")
    assert not proxied("https://idm.example.com")


# -- hostile peers: each caller gets its own answer, or a retry, never a neighbour's --------


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull"


async def read_requests(reader: asyncio.StreamReader, count: int) -> list[str]:
    """The paths of ``count`` pipelined requests."""
    return [(await read_request(reader))[0].split(" ")[1] for _ in range(count)]


def path(message: UUID) -> str:
    return f"/scim/v1/Message/{message}/_sent"


async def honest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer 200 to every request until the client hangs up."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()


async def test_a_stale_408_on_a_kept_alive_connection_is_nobodys_answer(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    """The server's idle timeout wrote 408 and closed just as we reused the connection."""
    seen: list[list[str]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            seen.append(await read_requests(reader, 1))
            writer.write(OK)
            await writer.drain()
            seen.append(await read_requests(reader, 2))  # the next batch, then the 408
            writer.write(
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            await writer.drain()
            return
        await honest(reader, writer)

    marker = pipeline_for(await scripted(script), certs)
    first, second, third = uuid4(), uuid4(), uuid4()
    await marker.mark_sent(first)
    results = await asyncio.gather(
        marker.mark_sent(second), marker.mark_sent(third), return_exceptions=True
    )
    await marker.aclose()
    assert list(results) == [None, None]  # asked again on a fresh connection, answered 200
    assert seen == [[path(first)], [path(second), path(third)]]


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        (OK + OK + OK, "an extra answer"),
        (b'HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n""' + OK + OK, "a stray 401"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nnull" + OK,
            "conflicting lengths",
        ),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 4\r\n\r\nnull" + OK, "a bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nnull" + OK, "a bad length"),
        (b"HTTP/1.1 102 Processing\r\n\r\n" * 50 + OK + OK, "a flood of interim answers"),
        (OK, "a close mid-batch"),
    ],
)
async def test_a_batch_with_wrong_answers_is_asked_again(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs, answers: bytes, why: str
) -> None:
    """The first connection answers the two-request batch wrongly; no caller may see a
    wrong answer: each gets the honest second connection's 200."""
    connections = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        connections.append(n)
        if n == 1:
            await read_requests(reader, 2)
            writer.write(answers)
            await writer.drain()
            await asyncio.sleep(0.2)
            return
        await honest(reader, writer)

    marker = pipeline_for(await scripted(script), certs)
    results = await asyncio.gather(
        marker.mark_sent(uuid4()), marker.mark_sent(uuid4()), return_exceptions=True
    )
    await marker.aclose()
    assert list(results) == [None, None], why
    assert len(connections) >= 2, why


async def test_reordered_refusals_are_never_attributed(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    """Answers swapped by a broken peer: the 404 meant for one request arrives for the other.
    A refusal in a batch is asked again alone, so it never reaches the wrong caller."""
    gone, present = uuid4(), uuid4()
    not_found = b'HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n"nomatchingentries"'

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                paths = [(await read_request(reader))[0].split(" ")[1]]
                while len(paths) < 2 and n == 1:
                    paths += await read_requests(reader, 1)
                # answer in reverse order: the 404 lands on the wrong request
                for p in reversed(paths):
                    writer.write(not_found if p == path(gone) else OK)
                await writer.drain()

    marker = pipeline_for(await scripted(script), certs)
    results = await asyncio.gather(
        marker.mark_sent(present), marker.mark_sent(gone), return_exceptions=True
    )
    await marker.aclose()
    assert results[0] is None  # the 404 meant for `gone` never reaches `present`
    # `gone` may have received `present`'s 200: harmless, as a message wrongly taken for
    # marked is listed again at the next poll and marked then
    assert results[1] is None or isinstance(results[1], KanidmNotFound)


async def test_an_endless_interim_stream_is_cut_and_reported(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000):
                writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
                await writer.drain()

    marker = pipeline_for(await scripted(script), certs)
    with pytest.raises(KanidmResponseError, match="interim"):
        await marker.mark_sent(uuid4())
    await marker.aclose()
    assert marker.connections_opened == 3  # the request was written three times, no more


async def test_one_deadline_covers_a_dripping_answer(
    scripted: Callable[[Script], Awaitable[str]], certs: Certs
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        with contextlib.suppress(ConnectionError):
            for byte in OK:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    marker = pipeline_for(await scripted(script), certs, timeout=0.5)
    with pytest.raises(KanidmUnavailable, match=r"within 0\.5 s"):
        await marker.mark_sent(uuid4())
    await marker.aclose()
