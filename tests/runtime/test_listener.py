"""The metrics and health listener under attack, while the engine delivers mail.

Anyone who can reach the port can try these; none may take descriptors, tasks, memory or
time from delivery, and none may make the listener print a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from structlog.testing import capture_logs

from kanidm_mail_sender.config.settings import ListenAddress
from kanidm_mail_sender.engine.engine import HealthView
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.runtime.httpserver import HttpServer, Limits, Request, Response, serve
from kanidm_mail_sender.runtime.listener import METRICS_LIMITS, start_metrics_server
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import Harness

Factory = Callable[..., Harness]
TIGHT = Limits(
    max_connections=8, header_timeout=0.5, idle_timeout=0.5, write_timeout=0.5, max_body=0
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def listener() -> AsyncIterator[HttpServer]:
    async def handle(request: Request) -> Response:
        return Response(200, b"ok\n", "text/plain")

    server = await serve(handle, "127.0.0.1", 0, limits=TIGHT)
    yield server
    await server.close()


async def raw(server: HttpServer, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send ``data`` on a new connection; what comes back before the server hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


async def test_the_listener_answers_and_keeps_alive(listener: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as http:
        for _ in range(3):
            assert (await http.get("/")).text == "ok\n"
    assert listener.connections_accepted == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n\r\n", b"413"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello", b"413"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b"400"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    ],
)
async def test_malformed_or_bodied_requests_get_a_status_not_a_traceback(
    listener: HttpServer, request_bytes: bytes, status: bytes
) -> None:
    with capture_logs() as logs:
        answer = await raw(listener, request_bytes)
    assert answer.split(b" ")[1] == status
    assert not [e for e in logs if e.get("exc_info") or e["log_level"] == "error"]


async def test_idle_and_slowloris_connections_are_cut_and_capped(listener: HttpServer) -> None:
    streams = []
    for _ in range(40):  # five times the cap
        streams.append(await asyncio.open_connection("127.0.0.1", listener.port))
    for _, writer in streams[:4]:
        writer.write(b"GET / HT")  # a head that never ends
    await asyncio.sleep(0.1)
    assert listener.open_connections <= TIGHT.max_connections
    # Past the cap, the oldest connection that asked nothing makes room for the newcomer.
    assert listener.connections_shed >= 40 - TIGHT.max_connections
    await asyncio.sleep(TIGHT.header_timeout + 0.5)
    assert listener.open_connections == 0  # the deadline freed every slot
    for _, writer in streams:
        writer.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as http:
        assert (await http.get("/")).status_code == 200


async def test_a_client_that_never_reads_its_answer_is_cut(listener: HttpServer) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few answers
    sock.connect(("127.0.0.1", listener.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)  # pipelined, never read
    await writer.drain()
    deadline = time.monotonic() + 30
    while listener.open_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert listener.open_connections == 0  # cut by the write deadline once buffers filled
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_delivery_goes_on_while_the_metrics_port_is_flooded(
    harness_factory: Factory, kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    """2,000 connection attempts and 500 slowloris heads at the metrics port, while 200
    messages go out: every one is mailed and marked, and the process's descriptors and
    tasks stay within the listener's budget."""
    metrics = Metrics()

    def view() -> HealthView:
        ready, why = metrics.ready()
        return HealthView(ready, why, None, 0, False, 0.0, 4, None, None, None)

    server = await start_metrics_server(metrics, view, ListenAddress("127.0.0.1", 0))
    fds_before, tasks_before = open_fds(), len(asyncio.all_tasks())
    held: list[asyncio.StreamWriter] = []
    peak = {"fds": 0, "tasks": 0}

    async def attack() -> None:
        for i in range(2000):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            except OSError:
                continue
            if i % 4 == 0:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
                held.append(writer)
            else:
                writer.close()
            peak["fds"] = max(peak["fds"], open_fds() - len(held))
            peak["tasks"] = max(peak["tasks"], len(asyncio.all_tasks()))

    for i in range(200):
        kanidm.queue_test_message(f"u{i}@example.com")
    harness = harness_factory()
    try:
        await asyncio.gather(attack(), asyncio.wait_for(harness.cycle(), 60))
        assert len(kanidm.sent()) == 200
        assert len(relay.mails) == 200
        assert server.open_connections <= METRICS_LIMITS.max_connections
        assert server.connections_shed + server.connections_refused > 0
        # our own side of the attack is `held`; the server's share stays within its budget
        budget = METRICS_LIMITS.max_connections + 64  # + the engine's own connections
        assert peak["fds"] - fds_before <= budget
        assert peak["tasks"] - tasks_before <= METRICS_LIMITS.max_connections + 64
    finally:
        for writer in held:
            writer.close()
        await server.close()


async def test_a_health_probe_gets_through_while_every_slot_is_held_idle() -> None:
    """An attacker holds all 32 slots open without asking anything, re-opening each as it
    is cut; a kubelet-like prober asks /healthz with a 1 s timeout: at most one probe fails."""
    metrics = Metrics()

    def view() -> HealthView:
        return HealthView(True, "ok", None, 0, False, 0.0, 4, None, None, None)

    server = await start_metrics_server(metrics, view, ListenAddress("127.0.0.1", 0))
    held: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def hold_every_slot() -> None:
        while not stop.is_set():
            held[:] = [w for w in held if not w.is_closing()]
            while len(held) < METRICS_LIMITS.max_connections + 4:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    held.append(writer)
            await asyncio.sleep(0.05)  # about 20 new connections a second once cut

    attacker = asyncio.create_task(hold_every_slot())
    failures = 0
    try:
        await asyncio.sleep(0.3)  # every slot taken before the first probe
        async with httpx.AsyncClient(timeout=1.0) as http:
            for _ in range(20):
                try:
                    answer = await http.get(f"http://127.0.0.1:{server.port}/healthz")
                    failures += answer.status_code != 200
                except httpx.HTTPError:
                    failures += 1
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(attacker, 5)
        for writer in held:
            writer.close()
        await server.close()
    assert failures <= 1
    assert server.connections_shed > 0  # the attack did fill the listener
