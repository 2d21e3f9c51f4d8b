"""``kanidm-mail-sender-sandbox``: the real daemon against local Kanidm and SMTP stand-ins.

Starts, on loopback, a Kanidm-compatible HTTPS queue and a capturing SMTP relay (STARTTLS and
AUTH), writes matching configs to a temporary folder, queues a test message and a credential
reset, runs ``kanidm-mail-sender`` against them and prints each mail as it arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from kanidm_mail_sender.sandbox.certs import make_certs
from kanidm_mail_sender.sandbox.configs import write_configs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import CapturedMail, SmtpStandIn

__all__ = ["main"]

TOKEN = "sandbox-token-not-a-real-jws"


def _show(mail: CapturedMail) -> None:
    bar = "=" * 72
    text = mail.data.decode("utf-8", "replace").replace("\r\n", "\n")
    print(
        f"\n{bar}\nmail to {', '.join(mail.rcpt_tos)} (from {mail.mail_from}, "
        f"AUTH as {mail.authenticated_as})\n{bar}\n{text}",
        flush=True,
    )


async def _run(work: Path, *, keep_running: bool, wait_seconds: float) -> int:
    certs = make_certs(work / "certs")
    kanidm = KanidmStandIn(TOKEN)
    await kanidm.start(certs.server_context())
    relay = SmtpStandIn(certs, mode="starttls", auth=("mailer", "sandbox-password"))
    relay.on_mail = _show
    await relay.start()
    client_path, mail_path = write_configs(
        work / "config", kanidm_url=kanidm.url, token=TOKEN, relay=relay, certs=certs
    )
    kanidm.queue_test_message("ellie@example.com", "Ellie Example")
    kanidm.queue_credential_reset("alice@example.com", "Alice Example")
    print(
        f"Kanidm stand-in: {kanidm.url}   SMTP relay: {relay.url} (STARTTLS + AUTH)\n"
        f"configs: {client_path} and {mail_path}\nqueued 2 messages; starting the daemon",
        flush=True,
    )
    command = [
        sys.executable,
        "-m",
        "kanidm_mail_sender",
        "-c",
        str(client_path),
        "-m",
        str(mail_path),
    ]
    if os.geteuid() == 0 or os.getegid() == 0:
        command.append("--skip-root-check")
        print("(running as root: passing --skip-root-check to the daemon)", flush=True)
    daemon = await asyncio.create_subprocess_exec(*command)
    deadline = time.monotonic() + wait_seconds
    try:
        while keep_running or kanidm.unsent():
            if daemon.returncode is not None:
                print(f"the daemon exited with {daemon.returncode}", flush=True)
                return 1
            if not keep_running and time.monotonic() > deadline:
                print("timed out waiting for every message to be marked sent", flush=True)
                return 1
            await asyncio.sleep(0.2)
        print(
            f"\nall {len(kanidm.sent())} messages were mailed and marked sent in Kanidm", flush=True
        )
        return 0
    finally:
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
            code = await daemon.wait()
            print(f"daemon stopped (exit code {code})", flush=True)
        await relay.stop()
        await kanidm.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kanidm-mail-sender-sandbox``."""
    parser = argparse.ArgumentParser(prog="kanidm-mail-sender-sandbox", description=__doc__)
    parser.add_argument(
        "--keep-running", action="store_true", help="keep everything running until Ctrl-C"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for delivery (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kanidm-mail-sender-sandbox-") as work:
        try:
            return asyncio.run(
                _run(Path(work), keep_running=args.keep_running, wait_seconds=args.timeout)
            )
        except KeyboardInterrupt:
            return 0
