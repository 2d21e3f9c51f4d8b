"""Operator commands on a terminal: control, invisible and bidirectional characters from
display names (the users' own), quoted local parts and relay replies are printed escaped,
never raw, in every table and ``show`` line."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from kanidm_mail_sender.core.states import DEFERRED, REJECTED
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import journalled, run, start, stop, wait_for

# ESC sequences that retitle the window, clear the screen, write the clipboard (OSC 52);
# BEL, a C1 CSI, a right-to-left override.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07\x9b31m\u202e"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


async def test_no_table_prints_a_control_character_raw(
    config_files: Callable[..., tuple[Path, Path]],
    daemon_command: Callable[..., list[str]],
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    tmp_path: Path,
) -> None:
    relay.faults.data_replies = {"replied@example.com": [f"451 4.3.0 busy {HOSTILE}"] * 9}
    named = kanidm.queue_test_message("named@example.com", f"Eve {HOSTILE}")
    replied = kanidm.queue_test_message("replied@example.com")
    quoted = kanidm.queue_test_message(f'"{HOSTILE}"@example.com')
    relay.faults.data_replies["named@example.com"] = ["451 4.3.0 later"] * 9
    client, mail = config_files()
    state_dir = tmp_path / "config" / "state"
    daemon = await start(daemon_command(client, mail))

    try:
        await wait_for(lambda: len(journalled(state_dir)) == 3, timeout=20)
        commands = [
            ["queue"],
            ["history"],
            ["history", "--state", DEFERRED],
            ["history", "--state", REJECTED],
            ["status"],
            ["show", str(named)],
            ["show", str(replied)],
            ["show", str(quoted)],
        ]
        # Side by side: they only read, as an operator's would beside the daemon.
        results = await asyncio.gather(*(run(daemon_command(client, mail, *a)) for a in commands))
        outputs = {
            " ".join(a): out + err for a, (_, out, err) in zip(commands, results, strict=True)
        }
    finally:
        code, log = await stop(daemon)
    assert not RAW.search(log)  # the logs escape already
    for command, text in outputs.items():
        assert not RAW.search(text), f"{command}: {RAW.findall(text)!r}"
    shown = outputs[f"show {named}"]
    assert "Eve \\x1b]0;pwned\\x07" in shown  # escaped, still readable
    assert "\\u202e" in outputs[f"show {replied}"]
    assert code == ExitCode.OK
