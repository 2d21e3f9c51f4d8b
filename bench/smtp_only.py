"""The SMTP-only ceiling: mails and nothing else, no Kanidm, no marks, no journal.

Sends COUNT pre-rendered mails of a real mail's size over CONCURRENCY reused implicit-TLS
connections to the sink, and prints one JSON line: messages per second and CPU seconds per
1,000 of the send phase (connections are opened first and not timed).

CLIENT ``aiosmtplib`` is a bare aiosmtplib client (one command per round trip: it does not
pipeline), the ceiling the targets use; ``ours`` is the daemon's own SMTP path
(``SmtpRelay``: pooled sessions, PIPELINING when offered), to show what it costs per mail.
Usage (from the repository root):
    python -m bench.smtp_only CLIENT CA_PATH RELAY_PORT COUNT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import functools
import json
import resource
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosmtplib

from bench.raw_client import MAIL
from kanidm_mail_sender.config.relays import parse_relay_url
from kanidm_mail_sender.core.mail import Envelope
from kanidm_mail_sender.smtp.relay import SmtpRelay, build_tls_context


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare_aiosmtplib(
    ca: str, port: int, concurrency: int
) -> list[Callable[[], Awaitable[object]]]:
    tls = ssl.create_default_context(cafile=ca)
    senders: list[Callable[[], Awaitable[object]]] = []
    for _ in range(concurrency):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, tls_context=tls)
        await smtp.connect()
        senders.append(
            functools.partial(smtp.sendmail, "idm@example.com", ["user@example.com"], MAIL)
        )
    return senders


async def our_relay(ca: str, port: int, concurrency: int) -> list[Callable[[], Awaitable[object]]]:
    relay = SmtpRelay(
        parse_relay_url(f"smtps://127.0.0.1:{port}"),
        tls_context=build_tls_context(Path(ca)),
        max_connections=concurrency,
    )
    envelope = Envelope("idm@example.com", "user@example.com", MAIL, "<bench@example.com>")
    # Open every connection before the clock starts, as for aiosmtplib.
    await asyncio.gather(*(relay.send(envelope) for _ in range(concurrency)))
    return [lambda: relay.send(envelope) for _ in range(concurrency)]


async def main() -> None:
    client, ca, port, count, concurrency = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    opener = bare_aiosmtplib if client == "aiosmtplib" else our_relay
    senders = await opener(ca, port, concurrency)
    left = count

    async def worker(send: Callable[[], Awaitable[object]]) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    started, cpu0 = time.perf_counter(), cpu()
    await asyncio.gather(*(worker(send) for send in senders))
    elapsed, spent = time.perf_counter() - started, cpu() - cpu0
    print(json.dumps({"rate": count / elapsed, "cpu_per_1k": spent * 1000 / count}))


if __name__ == "__main__":
    asyncio.run(main())
