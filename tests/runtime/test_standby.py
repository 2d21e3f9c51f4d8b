"""Two real daemons on two state directories (two hosts) against one Kanidm: a primary and a
standby with ``standby_delay_seconds``. While both run nothing goes out twice; after kill -9
of the primary the standby delivers the backlog once the delay has passed."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.sandbox.configs import write_configs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import TOKEN, start, stop, wait_for

Command = Callable[..., list[str]]
DELAY = 4.0


def _mails_per_message(relay: SmtpStandIn) -> Counter[str]:
    return Counter(str(mail.message["To"]) for mail in relay.mails)


async def test_standby_sends_nothing_while_the_primary_runs_then_takes_over(
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    certs: Certs,
    daemon_command: Command,
    tmp_path: Path,
) -> None:
    def configs(name: str, **extra: object) -> tuple[Path, Path]:
        return write_configs(
            tmp_path / name, kanidm_url=kanidm.url, token=TOKEN, relay=relay, certs=certs, **extra
        )

    primary = await start(daemon_command(*configs("primary")))
    standby = await start(daemon_command(*configs("standby", standby_delay_seconds=DELAY)))
    try:
        for i in range(20):
            kanidm.queue_test_message(f"first{i}@example.com")
        await wait_for(lambda: kanidm.unsent_count() == 0)
        # Let the standby see these messages for longer than its delay: had the primary not
        # marked them, it would send them now.
        await asyncio.sleep(DELAY + 1.5)
        assert _mails_per_message(relay) == {f"first{i}@example.com": 1 for i in range(20)}

        primary.kill()
        await primary.wait()
        assert primary.returncode == -signal.SIGKILL
        queued_at = time.time()
        for i in range(20):
            kanidm.queue_test_message(f"second{i}@example.com")
        await wait_for(lambda: kanidm.unsent_count() == 0, timeout=DELAY + 20)
        # The standby waited for the delay (send_after is one second before queueing).
        first_taken = min(m.received_at for m in relay.mails if "second" in str(m.rcpt_tos))
        assert first_taken >= queued_at - 1 + DELAY - 0.5
        code, err = await stop(standby)
        assert code == ExitCode.OK, err
        assert err.count("mail.accepted") == 20  # the second batch only: none of the first
    finally:
        for proc in (primary, standby):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    expected = {f"{kind}{i}@example.com": 1 for kind in ("first", "second") for i in range(20)}
    assert _mails_per_message(relay) == expected
    assert sum(kanidm.mark_calls.values()) >= 40
