"""The raw ceiling: the same per-message work as the daemon and nothing else.

One aiosmtplib send of a pre-rendered mail on a reused TLS connection plus one httpx
mark-sent POST per ready message, with the same concurrency; no rendering, no journal.
Usage: raw_client.py KANIDM_URL TOKEN CA_PATH RELAY_PORT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiosmtplib
import httpx

MAIL = (
    b"From: Kanidm <idm@example.com>\r\nTo: user@example.com\r\nSubject: Kanidm: Test"
    b' Message\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n\r\n'
    + b"Hello, this is a benchmark mail of roughly the size of a real one.\r\n"
    * 6
)


async def main() -> None:
    url, token, ca, port, concurrency = sys.argv[1:6]
    tls = ssl.create_default_context(cafile=ca)
    workers = int(concurrency)
    async with httpx.AsyncClient(
        base_url=url,
        verify=tls,
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=max(8, workers * 2)),
    ) as http:
        ready = (await http.get("/scim/v1/Message/_ready")).json()["resources"]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for resource in ready:
            queue.put_nowait(resource["id"])

        async def worker() -> None:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=int(port), use_tls=True, tls_context=tls
            )
            await smtp.connect()
            while not queue.empty():
                message_id = queue.get_nowait()
                await smtp.sendmail("idm@example.com", ["user@example.com"], MAIL)
                response = await http.post(
                    f"/scim/v1/Message/{message_id}/_sent",
                    content=b"null",
                    headers={"Content-Type": "application/json"},
                )
                response.raise_for_status()
            await smtp.quit()

        await asyncio.gather(*(worker() for _ in range(workers)))


if __name__ == "__main__":
    asyncio.run(main())
