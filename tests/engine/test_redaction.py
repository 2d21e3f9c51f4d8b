"""A reset link a relay quotes back (a content filter naming the URL it refused) is never kept:
not in the journal's files, the daemon's log, status.json or any operator command's output.
The mail was refused, so the link was never used and stays valid until it expires."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote_plus

from kanidm_mail_sender.core.states import DEFERRED, REJECTED
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import journalled, run, start, stop, wait_for

INTENT = "Zk4p9x+2hzat/vqe7c"  # with characters that URL quoting changes


async def test_a_quoted_reset_link_is_kept_nowhere(
    config_files: Callable[..., tuple[Path, Path]],
    daemon_command: Callable[..., list[str]],
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    tmp_path: Path,
) -> None:
    link = f"https://idm.example.com/ui/reset?token={quote_plus(INTENT)}"
    relay.faults.data_replies = {
        "rejected@example.com": [f"550 5.7.1 Message rejected: URL {link} is listed"],
        "deferred@example.com": [f"451 4.7.1 Greylisted: {INTENT} seen, try later"] * 5,
    }
    ids = [
        kanidm.queue_credential_reset(address, intent=INTENT)
        for address in ("rejected@example.com", "deferred@example.com")
    ]
    client, mail = config_files()
    state_dir = tmp_path / "config" / "state"
    daemon = await start(daemon_command(client, mail))

    try:
        await wait_for(
            lambda: {row.state for row in journalled(state_dir)} == {REJECTED, DEFERRED}, 20
        )
        await asyncio.sleep(0.3)  # the status file after the poll
        outputs = []
        for command in (
            ["history", "--json"],
            ["history"],
            ["show", "--json", str(ids[0])],
            ["show", str(ids[1])],
            ["status", "--json"],
        ):
            code, out, err = await run(daemon_command(client, mail, *command))
            assert code in (ExitCode.OK, ExitCode.FATAL), err
            outputs.append(out + err)
    finally:
        code, log = await stop(daemon)
    assert code == ExitCode.OK, log
    assert "[redacted]" in log  # the refusals were logged, without the secret
    kept = [log, *outputs]
    kept += [path.read_bytes().decode("latin-1") for path in state_dir.iterdir() if path.is_file()]
    for form in (INTENT, quote_plus(INTENT), link):
        assert not [text for text in kept if form in text], form
    assert "Message rejected: URL https://idm.example.com/ui/reset?token=[redacted]" in "".join(
        outputs
    )
