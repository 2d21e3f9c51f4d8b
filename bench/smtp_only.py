"""The SMTP-only ceiling: a bare aiosmtplib client and nothing else, no Kanidm, no marks.

Sends COUNT pre-rendered mails of a real mail's size over CONCURRENCY reused implicit-TLS
connections to the sink, as fast as aiosmtplib goes (one command per round trip, as it does
not pipeline), and prints one JSON line: messages per second and CPU seconds per 1,000 of the
send phase (connections are opened first and not timed).
Usage (from the repository root): python -m bench.smtp_only CA_PATH RELAY_PORT COUNT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import sys
import time

import aiosmtplib

from bench.raw_client import MAIL


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    ca, port, count, concurrency = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:5])
    tls = ssl.create_default_context(cafile=ca)
    connections = []
    for _ in range(concurrency):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, tls_context=tls)
        await smtp.connect()
        connections.append(smtp)
    left = count

    async def worker(smtp: aiosmtplib.SMTP) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await smtp.sendmail("idm@example.com", ["user@example.com"], MAIL)

    started, cpu0 = time.perf_counter(), cpu()
    await asyncio.gather(*(worker(smtp) for smtp in connections))
    elapsed, spent = time.perf_counter() - started, cpu() - cpu0
    for smtp in connections:
        await smtp.quit()
    print(json.dumps({"rate": count / elapsed, "cpu_per_1k": spent * 1000 / count}))


if __name__ == "__main__":
    asyncio.run(main())
