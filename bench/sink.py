"""A minimal implicit-TLS SMTP sink for benchmarks: accepts everything, stores nothing.

aiosmtpd costs more CPU per message than the client under test, so it would measure itself;
this sink does the least an SMTP server can. Usage: sink.py CERT KEY PORTFILE [DELAY_MS]

DELAY_MS holds back every reply, like a relay across a network instead of on loopback: each
reply leaves DELAY_MS after its command arrived, in order. The replies to commands that came
in together (PIPELINING, which the sink offers) leave together in one write, as a real
relay such as Postfix flushes its replies once it has read all the input it had.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

COUNT = 0
DELAY = 0.0


class Replies:
    """The replies of one connection not yet written, flushed DELAY after the first."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []

    async def add(self, data: bytes) -> None:
        if not DELAY:
            self._writer.write(data)
            await self._writer.drain()
            return
        if not self._pending:
            asyncio.get_running_loop().call_later(DELAY, self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        data, self._pending = b"".join(self._pending), []
        if not self._writer.is_closing():
            self._writer.write(data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global COUNT
    replies = Replies(writer)
    reply = replies.add
    try:
        await reply(b"220 sink ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"EHLO":
                await reply(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n")
            elif verb == b"DATA":
                await reply(b"354 go ahead\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                COUNT += 1
                await reply(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                await reply(b"221 bye\r\n")
                await asyncio.sleep(DELAY)  # the 221 leaves first
                break
            else:
                await reply(b"250 ok\r\n")
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main() -> None:
    global DELAY
    cert, key, port_file = sys.argv[1:4]
    DELAY = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    with open(port_file, "w") as out:
        out.write(str(server.sockets[0].getsockname()[1]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(f"sink received {COUNT} messages", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
