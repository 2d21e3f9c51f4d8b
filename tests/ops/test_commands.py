"""The operator's commands against a running daemon and the stand-ins: status, queue, history,
show and retry, as tables and JSON; and their pure pieces (queue ids, retry rules, durations)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from kanidm_mail_sender.cli import _parser
from kanidm_mail_sender.core.queueid import relay_queue_id
from kanidm_mail_sender.core.states import DestinationState
from kanidm_mail_sender.errors import RetryRefused
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.ops.commands import run_command
from kanidm_mail_sender.ops.context import Context
from kanidm_mail_sender.ops.durations import parse_since
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from kanidm_mail_sender.state.retries import plan_retry
from kanidm_mail_sender.state.view import JournalView
from tests.helpers import run, wait_for

Command = Callable[..., list[str]]

# --- pure pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("2.0.0 Ok: queued as 4ZxY3b0kQJz9tVb", "4ZxY3b0kQJz9tVb"),  # Postfix
        ("Ok: queued as Q17", "Q17"),  # the stand-in, Postfix-like
        ("OK id=1tK9Xy-000AbC-2d", "1tK9Xy-000AbC-2d"),  # Exim
        (
            "2.6.0 <a1@example.com> [InternalId=86247264278593, Hostname=AM0PR02MB1234.eurprd02"
            ".prod.outlook.com] 10530 bytes in 0.100, 102.207 KB/sec Queued mail for delivery",
            "86247264278593",
        ),  # Exchange Online
        (
            "Ok 0102018c2f1e9c3a-7d0a6c3e-5d5e-4b1f-9c7e-2a1b3c4d5e6f-000000",
            "0102018c2f1e9c3a-7d0a6c3e-5d5e-4b1f-9c7e-2a1b3c4d5e6f-000000",
        ),  # Amazon SES
        (
            "2.0.0 OK  1733050000 a640c23a62f3a-aa5f3b0c1d2si.42 - gsmtp",
            "a640c23a62f3a-aa5f3b0c1d2si.42",
        ),
        ("2.0.0 Message accepted", None),
        ("", None),
    ],
)
def test_relay_queue_ids(reply: str, expected: str | None) -> None:
    assert relay_queue_id(reply) == expected


def _state(state: str, attempts: int = 1) -> DestinationState:
    return DestinationState(state, attempts, None, f"{state} reply")


@pytest.mark.parametrize(
    ("states", "destination", "resend", "expected"),
    [
        ({"a@x": _state("rejected")}, "a@x", False, ["a@x"]),
        ({"a@x": _state("deferred")}, "A@X", False, ["a@x"]),
        ({"a@x": _state("accepted"), "b@x": _state("rejected")}, None, False, ["b@x"]),
        ({"a@x": _state("accepted")}, "a@x", True, ["a@x"]),
        ({"a@x": _state("accepted"), "b@x": _state("deferred")}, None, True, ["a@x", "b@x"]),
    ],
)
def test_retry_plans(
    states: dict[str, DestinationState], destination: str | None, resend: bool, expected: list[str]
) -> None:
    assert plan_retry(states, destination, resend) == expected


@pytest.mark.parametrize(
    ("states", "destination", "resend", "fragment"),
    [
        ({"a@x": _state("accepted")}, "a@x", False, "--resend"),
        ({"a@x": _state("accepted")}, None, False, "every destination was accepted"),
        ({"a@x": _state("expired")}, "a@x", True, "expired"),
        ({"a@x": _state("rejected")}, "b@x", False, "it has: a@x"),
        ({}, None, False, "never tried"),
    ],
)
def test_retry_refusals(
    states: dict[str, DestinationState], destination: str | None, resend: bool, fragment: str
) -> None:
    with pytest.raises(RetryRefused, match=fragment):
        plan_retry(states, destination, resend)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1h30m", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "2w", "h2", "2h x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_since(text)


# --- against a running daemon ---------------------------------------------------------------


class Scene:
    """A daemon that has accepted, deferred, rejected and expired one destination each.

    The commands run in this process, parsed by the CLI's own parser (a Python start per
    command would cost more than the rest); the last test below runs the real command line.
    """

    def __init__(self, client: Path, mail: Path, ids: dict[str, UUID]) -> None:
        self.client, self.mail, self.ids = client, mail, ids

    async def cli(self, *args: str) -> tuple[int, str, str]:
        parsed = _parser({}).parse_args(["-c", str(self.client), "-m", str(self.mail), *args])
        out = io.StringIO()
        context = Context(
            client_config=parsed.client_config,
            mail_config=parsed.mail_sender_config,
            environ={},
            out=out,
            as_json=parsed.json,
            offline=getattr(parsed, "offline", False),
        )
        code = await run_command(parsed, context)
        return code, out.getvalue(), ""

    async def json(self, *args: str) -> Any:
        code, out, err = await self.cli(*args, "--json")
        assert code in (0, 1), err
        return json.loads(out)


@pytest.fixture
async def scene(
    config_files: Callable[..., tuple[Path, Path]],
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    tmp_path: Path,
) -> AsyncIterator[Scene]:
    relay.faults.rcpt_replies = {
        "bob@example.com": [
            "451 4.7.1 <bob@example.com>: Recipient address rejected: Policy rejection, try "
            "again later"
        ]
        * 10,
        "carol@example.com": ["550 5.1.1 no such user"] * 10,
    }
    ids = {
        "alice": kanidm.queue_test_message("alice@example.com"),
        "bob": kanidm.queue_test_message("bob@example.com"),
        "carol": kanidm.queue_test_message("carol@example.com"),
        "dave": kanidm.queue_credential_reset(
            "dave@example.com", expires_in=-60, intent="SECRET-INTENT-dave"
        ),
    }
    client, mail = config_files()
    process = await asyncio.create_subprocess_exec(
        *daemon_command(client, mail),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    state_dir = tmp_path / "config" / "state"

    def settled() -> bool:
        try:
            view = JournalView(state_dir)
        except Exception:
            return False
        try:
            return len(view.rows()) == 4 and (state_dir / "status.json").exists()
        finally:
            view.close()

    try:
        await wait_for(settled, timeout=30)
        await wait_for(lambda: ids["alice"] in kanidm.sent(), timeout=10)
        yield Scene(client, mail, ids)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)


async def test_status_reports_daemon_poll_relay_counts_and_oldest(scene: Scene) -> None:
    code, out, _ = await scene.cli("status")
    assert code == ExitCode.OK
    assert "running, pid" in out
    assert "accepted 1, deferred 1, expired 1, rejected 1" in out
    data = await scene.json("status")
    assert data["daemon"]["running"] is True
    assert data["last_poll"]["error"] is None
    assert data["relay"]["paused"] is False
    assert data["journal_counts"] == {"accepted": 1, "deferred": 1, "rejected": 1, "expired": 1}
    assert data["ready_now"] == 3  # bob, carol and dave are still in Kanidm's queue
    assert data["oldest_ready"]["id"] in {str(scene.ids[n]) for n in ("bob", "carol", "dave")}
    offline = await scene.json("status", "--offline")
    assert offline["ready_now"] is None


async def test_history_filters_and_json(scene: Scene) -> None:
    rows = await scene.json("history")
    assert {r["destination"]: r["state"] for r in rows} == {
        "alice@example.com": "accepted",
        "bob@example.com": "deferred",
        "carol@example.com": "rejected",
        "dave@example.com": "expired",
    }
    rejected = await scene.json("history", "--state", "rejected")
    assert [r["destination"] for r in rejected] == ["carol@example.com"]
    assert "550 5.1.1" in rejected[0]["reply"]
    assert [r["state"] for r in await scene.json("history", "--to", "BOB@example.com")] == [
        "deferred"
    ]
    assert len(await scene.json("history", "--since", "1h")) == 4
    code, out, _ = await scene.cli("history")
    assert code == ExitCode.OK
    assert out.splitlines()[0].split() == [
        "updated",
        "message",
        "destination",
        "state",
        "attempts",
        "next",
        "attempt",
        "last",
        "reply",
    ]
    assert "451 4.7.1" in out


async def test_show_and_queue_join_kanidm_and_the_journal(scene: Scene) -> None:
    alice = await scene.json("show", str(scene.ids["alice"]))
    assert alice["kanidm"]["sent_at"] is not None
    [row] = alice["destinations"]
    assert row["state"] == "accepted"
    assert row["relay_queue_id"] == "Q1"  # the stand-in's "queued as Q1"
    code, out, _ = await scene.cli("show", str(scene.ids["dave"]))
    assert code == ExitCode.OK
    assert "credential_reset_v1" in out
    assert "expired" in out
    assert "SECRET-INTENT" not in out  # the reset link's secret is never shown
    entries = await scene.json("queue")
    assert {e["id"]: e["delivery"] for e in entries} == {
        str(scene.ids["alice"]): {"alice@example.com": "accepted"},
        str(scene.ids["bob"]): {"bob@example.com": "deferred"},
        str(scene.ids["carol"]): {"carol@example.com": "rejected"},
        str(scene.ids["dave"]): {"dave@example.com": "expired"},
    }
    code, out, _ = await scene.cli("queue")
    assert "carol@example.com (rejected)" in out
    assert "queued" in out
    assert "SECRET-INTENT" not in out
    code, out, _ = await scene.cli("show", "00000000-0000-0000-0000-000000000001")
    assert code == ExitCode.NOT_DONE
    assert "neither Kanidm nor the journal" in out


async def test_retry_of_a_rejected_destination_after_the_fix_delivers_it_once(
    scene: Scene, relay: SmtpStandIn, kanidm: KanidmStandIn
) -> None:
    carol = scene.ids["carol"]
    relay.faults.rcpt_replies.pop("carol@example.com")  # the relay is fixed
    code, out, _ = await scene.cli("retry", str(carol), "carol@example.com")
    assert code == ExitCode.OK, out
    assert "handed to the running daemon (pid" in out
    await wait_for(lambda: carol in kanidm.sent(), timeout=15)
    polls = kanidm.list_calls
    await wait_for(lambda: kanidm.list_calls >= polls + 2, timeout=15)  # it must not go again
    assert [m.rcpt_tos for m in relay.mails].count(["carol@example.com"]) == 1
    code, out, _ = await scene.cli("retry", str(carol))
    assert code == ExitCode.NOT_DONE
    assert "every destination was accepted" in out


async def test_retry_of_a_destination_refused_451_4_7_1_delivers_it_once(
    scene: Scene, relay: SmtpStandIn, kanidm: KanidmStandIn
) -> None:
    """A per-recipient 4.7.1 is journalled as that destination's deferral, so it shows in the
    queue and an operator can retry it."""
    bob = scene.ids["bob"]
    entries = await scene.json("queue")
    assert {e["id"]: e["delivery"] for e in entries}[str(bob)] == {"bob@example.com": "deferred"}
    relay.faults.rcpt_replies.pop("bob@example.com")
    code, out, _ = await scene.cli("retry", str(bob), "bob@example.com")
    assert code == ExitCode.OK, out
    await wait_for(lambda: bob in kanidm.sent(), timeout=15)
    assert [m.rcpt_tos for m in relay.mails].count(["bob@example.com"]) == 1


async def test_retry_of_an_accepted_destination_needs_resend_and_a_queued_message(
    scene: Scene, relay: SmtpStandIn
) -> None:
    alice = str(scene.ids["alice"])
    code, out, _ = await scene.cli("retry", alice, "alice@example.com")
    assert code == ExitCode.NOT_DONE
    assert "give --resend" in out
    code, out, _ = await scene.cli("retry", alice, "alice@example.com", "--resend")
    assert code == ExitCode.NOT_DONE
    assert "marked sent" in out  # Kanidm will never list it again
    # --offline cannot skip the guard: without Kanidm's word, no resend.
    code, out, _ = await scene.cli("retry", alice, "alice@example.com", "--resend", "--offline")
    assert code == ExitCode.NOT_DONE
    assert "without --offline" in out
    code, out, _ = await scene.cli("retry", str(scene.ids["dave"]))
    assert code == ExitCode.NOT_DONE
    assert "expired" in out
    assert [m.rcpt_tos for m in relay.mails].count(["alice@example.com"]) == 1


async def test_status_without_a_daemon_and_retry_applied_directly(
    config_files: Callable[..., tuple[Path, Path]],
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    relay.faults.rcpt_replies = {"erin@example.com": ["550 5.1.1 no such user"]}
    erin = kanidm.queue_test_message("erin@example.com")
    client, mail = config_files()
    code, _, _ = await run(daemon_command(client, mail, "status", "--offline"))
    assert code == ExitCode.FATAL
    process = await asyncio.create_subprocess_exec(
        *daemon_command(client, mail),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_for(lambda: relay.faults.rcpt_replies["erin@example.com"] == [], timeout=20)
    await asyncio.sleep(0.5)
    process.terminate()
    await asyncio.wait_for(process.wait(), 15)
    code, out, _ = await run(daemon_command(client, mail, "status"))
    assert code == ExitCode.FATAL
    assert "NOT RUNNING" in out
    code, out, _ = await run(daemon_command(client, mail, "retry", str(erin), "--json"))
    assert code == ExitCode.OK, out
    assert json.loads(out) == {"applied": True, "destinations": ["erin@example.com"]}
    process = await asyncio.create_subprocess_exec(
        *daemon_command(client, mail),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: erin in kanidm.sent(), timeout=20)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    assert [m.rcpt_tos for m in relay.mails] == [["erin@example.com"]]


async def test_commands_show_config_warnings_apart_from_their_output(
    config_files: Callable[..., tuple[Path, Path]], daemon_command: Command
) -> None:
    """A world-readable file of secrets is warned about as the daemon would, on stderr, and
    the JSON on stdout stays JSON."""
    client, mail = config_files()
    mail.chmod(0o644)
    code, out, err = await run(daemon_command(client, mail, "status", "--offline", "--json"))
    assert code in (ExitCode.OK, ExitCode.FATAL)  # no daemon runs here
    assert f"warning: {mail}: holds secrets but is readable by all users" in err
    assert isinstance(json.loads(out), dict)
