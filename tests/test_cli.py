"""The real command line in a subprocess: exit codes, test mode, signals, crash recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kanidm_mail_sender import __version__
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import (
    ROOT,
    SMTP_AUTH,
    TOKEN,
    api_token,
    env,
    in_process,
    run,
    start,
    stop,
    wait_for,
)

ConfigFiles = Callable[..., tuple[Path, Path]]
Command = Callable[..., list[str]]
IS_ROOT = os.geteuid() == 0 or os.getegid() == 0


async def test_version_and_help() -> None:
    code, out, _ = await in_process([sys.executable, "-m", "kanidm_mail_sender", "--version"])
    assert (code, out.strip()) == (0, f"kanidm-mail-sender {__version__}")
    code, out, _ = await in_process([sys.executable, "-m", "kanidm_mail_sender", "--help"])
    assert code == ExitCode.OK
    for flag in (
        "--client-config",
        "--mail-sender-config",
        "--test-email",
        "--debug",
        "--render",
        "--check",
    ):
        assert flag in out
    assert "--skip-root-check" not in out


@pytest.mark.parametrize(
    ("args", "debug", "said"),
    [
        ([], "maybe", "KANIDM_DEBUG"),
        ([], "2", "KANIDM_DEBUG"),
        (["--no-such-flag"], "0", "unrecognized arguments: --no-such-flag"),
        (["--render"], "0", "expected one argument"),
    ],
)
async def test_a_bad_flag_or_kanidm_debug_is_a_usage_error(
    args: list[str], debug: str, said: str, tmp_path: Path
) -> None:
    code, _, err = await in_process(
        [sys.executable, "-m", "kanidm_mail_sender", "-c", str(tmp_path), *args],
        environ=env(KANIDM_DEBUG=debug),
    )
    assert code == ExitCode.USAGE
    assert said in err


# The tests here that drive each row of README's exit-code table with its real cause.
EXIT_CODE_ROWS = {
    ExitCode.OK: [
        "test_daemon_delivers_ignores_hup_and_stops_cleanly_on_term",
        "test_test_mode_sends_one_mail_without_kanidm",
        "test_check_passes_on_a_good_setup",
        "test_render_prints_the_whole_mail",
    ],
    ExitCode.FATAL: [
        "test_mark_sent_401_stops_the_daemon_nonzero",
        "test_a_journal_that_cannot_be_written_while_running_exits_1",
    ],
    ExitCode.USAGE: ["test_a_bad_flag_or_kanidm_debug_is_a_usage_error"],
    ExitCode.CONFIG: [
        "test_missing_config_exits_3",
        "test_invalid_config_exits_3_without_leaking_secrets",
        "test_schedule_without_future_fire_time_exits",
        "test_a_value_refused_after_loading_names_file_and_key_in_both_start_and_check",
    ],
    ExitCode.ROOT: [
        "test_refuses_root_without_skip",
        "test_check_as_root_refuses_as_the_daemon_does",
    ],
    ExitCode.NOT_DONE: [
        "test_test_mode_failure_exits_nonzero",
        "test_check_reports_bad_token_and_bad_relay_password",
        "test_check_finds_a_read_only_token_without_marking_anything",
    ],
    ExitCode.STATE: [
        "test_second_instance_on_one_state_dir_exits",
        "test_a_value_refused_after_loading_names_file_and_key_in_both_start_and_check",
    ],
}


def test_every_row_of_the_readme_exit_code_table_is_driven_here() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    rows = [int(line.split("|")[1]) for line in table.splitlines()[2:]]
    assert rows == [int(code) for code in ExitCode]
    assert set(EXIT_CODE_ROWS) == set(ExitCode)
    missing = [name for names in EXIT_CODE_ROWS.values() for name in names if name not in globals()]
    assert not missing


async def test_missing_config_exits_3(tmp_path: Path, daemon_command: Command) -> None:
    code, _, err = await in_process(daemon_command(tmp_path / "nope", tmp_path / "nope2"))
    assert code == ExitCode.CONFIG
    assert f"{tmp_path / 'nope'}: config file missing" in err


async def test_invalid_config_exits_3_without_leaking_secrets(
    config_files: ConfigFiles, daemon_command: Command
) -> None:
    client, mail = config_files(mail_relay="ftp://relay.example.com")
    code, _, err = await in_process(daemon_command(client, mail))
    assert code == ExitCode.CONFIG
    assert "key 'mail_relay'" in err
    assert str(mail) in err
    assert TOKEN not in err
    assert SMTP_AUTH[1] not in err


@pytest.mark.skipif(not IS_ROOT, reason="needs to run as root to see the refusal")
async def test_refuses_root_without_skip(config_files: ConfigFiles) -> None:
    client, mail = config_files()
    code, _, err = await in_process(
        [sys.executable, "-m", "kanidm_mail_sender", "-c", str(client), "-m", str(mail)]
    )
    assert code == ExitCode.ROOT
    assert "refusing to run as root" in err


async def test_test_mode_sends_one_mail_without_kanidm(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    client, mail = config_files()
    code, out, err = await in_process(
        daemon_command(client, mail, "-t", "tester@example.com", "-d")
    )
    assert code == ExitCode.OK, err
    assert "OK" in out
    (received,) = relay.mails
    msg = received.message
    assert msg["To"] == "tester@example.com"
    assert msg["Subject"] == "Kanidm Sandbox: Test Message"
    assert "Hello KANIDM MAIL SENDER TEST," in msg.get_content()
    assert kanidm.list_calls == 0
    assert TOKEN not in err
    assert SMTP_AUTH[1] not in err


async def test_test_mode_failure_exits_nonzero(
    config_files: ConfigFiles, daemon_command: Command, relay: SmtpStandIn
) -> None:
    client, mail = config_files(mail_password="wrong-password")
    code, out, _ = await in_process(daemon_command(client, mail, "-t", "tester@example.com"))
    assert code == ExitCode.NOT_DONE
    assert "FAILED" in out
    assert relay.mails == []


async def test_daemon_delivers_ignores_hup_and_stops_cleanly_on_term(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    ids = [kanidm.queue_test_message(f"u{i}@example.com") for i in range(3)]
    ids.append(kanidm.queue_credential_reset("alice@example.com"))
    client, mail = config_files()
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: len(kanidm.sent()) == 4)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        proc.send_signal(sig)
    await asyncio.sleep(1.5)
    assert proc.returncode is None
    code, err = await stop(proc)
    assert code == ExitCode.OK, err
    assert len(relay.mails) == 4
    assert all(kanidm.mark_calls[i] == 1 for i in ids)
    assert "mail.accepted" in err


async def test_mark_sent_401_stops_the_daemon_nonzero(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
) -> None:
    kanidm.queue_test_message("a@example.com")
    kanidm.faults.mark_statuses = [401]
    client, mail = config_files()
    code, _, err = await run(daemon_command(client, mail))
    assert code == ExitCode.FATAL
    assert "token is not accepted" in err
    assert len(relay.mails) == 1


async def test_schedule_without_future_fire_time_exits(
    config_files: ConfigFiles, daemon_command: Command
) -> None:
    client, mail = config_files(schedule="0 0 0 1 1 ? 2020")
    code, _, err = await run(daemon_command(client, mail))
    assert code == ExitCode.CONFIG
    assert "no fire time in the future" in err


async def test_second_instance_on_one_state_dir_exits(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
) -> None:
    client, mail = config_files()
    first = await start(daemon_command(client, mail))
    await wait_for(lambda: kanidm.list_calls > 0)
    code, _, err = await run(daemon_command(client, mail))
    assert code == ExitCode.STATE
    assert "another kanidm-mail-sender already uses" in err
    code, _ = await stop(first)
    assert code == ExitCode.OK


async def test_a_journal_that_cannot_be_written_while_running_exits_1(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    tmp_path: Path,
) -> None:
    """The same fault gives the same code: a failed journal write at run time is fatal (1,
    what README's table and the hard stop say), not a state directory unusable at start (6)."""
    client, mail = config_files()
    daemon = await start(daemon_command(client, mail))
    journal = tmp_path / "config" / "state" / "journal.sqlite3"
    await wait_for(lambda: kanidm.list_calls > 0)
    # A real refusal from SQLite itself, as a full disk or a broken file would give one.
    with sqlite3.connect(journal) as db:
        for event in ("INSERT", "UPDATE"):
            db.execute(
                f"CREATE TRIGGER refuse_{event.lower()} BEFORE {event} ON delivery "
                "BEGIN SELECT RAISE(ABORT, 'the disk is gone'); END"
            )
    db.close()
    kanidm.queue_test_message("alice@example.com")
    _, err = await asyncio.wait_for(daemon.communicate(), 30)
    assert daemon.returncode == ExitCode.FATAL, err.decode()
    assert "writing the delivery journal failed" in err.decode()


async def test_kill_9_between_acceptance_and_mark_does_not_resend(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    relay: SmtpStandIn,
    tmp_path: Path,
) -> None:
    message = kanidm.queue_credential_reset("alice@example.com")
    kanidm.faults.mark_delay = 60  # the mark hangs: the crash lands after relay acceptance
    client, mail = config_files()
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: len(relay.mails) == 1 and kanidm.mark_calls[message] == 1)
    proc.kill()
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    journal = sqlite3.connect(tmp_path / "config" / "state" / "journal.sqlite3")
    assert journal.execute("SELECT state FROM delivery").fetchall() == [("accepted",)]
    journal.close()
    assert kanidm.unsent() == [message]
    kanidm.faults.mark_delay = 0
    proc = await start(daemon_command(client, mail))
    await wait_for(lambda: kanidm.sent() == [message])
    code, _ = await stop(proc)
    assert code == ExitCode.OK
    assert len(relay.mails) == 1


async def test_render_prints_the_whole_mail(
    config_files: ConfigFiles, daemon_command: Command, relay: SmtpStandIn
) -> None:
    client, mail = config_files()
    code, out, _ = await in_process(daemon_command(client, mail, "--render", "credential_reset_v1"))
    assert code == ExitCode.OK
    assert "Subject: Kanidm Sandbox: Credential Reset Link" in out
    assert "From: Kanidm Sandbox <idm@example.com>" in out
    assert "https://idm.example.com/ui/reset?token=k4p9x-2hzat-vqe7c-83wbj" in out
    assert relay.mails == []


@pytest.mark.parametrize(
    ("language", "code", "said"),
    [
        ("de", ExitCode.OK, "Content-Language: de"),
        ("ja", ExitCode.OK, "Content-Language: ja"),
        ("tlh", ExitCode.CONFIG, "--language 'tlh': no catalog serves it; there are: cs, da"),
    ],
)
async def test_render_previews_any_language(
    config_files: ConfigFiles, daemon_command: Command, language: str, code: ExitCode, said: str
) -> None:
    client, mail = config_files(mail_timezone="Europe/Berlin")
    command = daemon_command(
        client, mail, "--render", "credential_reset_v1", "--language", language
    )
    got, out, err = await in_process(command)
    assert got == code, err
    assert said in out + err
    assert "Traceback" not in err


async def test_check_passes_on_a_good_setup(
    config_files: ConfigFiles,
    daemon_command: Command,
    relay: SmtpStandIn,
    kanidm: KanidmStandIn,
) -> None:
    kanidm.queue_test_message("a@example.com")
    client, mail = config_files()
    code, out, _ = await in_process(daemon_command(client, mail, "--check"))
    assert code == ExitCode.OK, out
    assert "ok   kanidm: the token works; 1 message(s) ready" in out
    assert "ok   kanidm: the token may mark messages sent" in out
    assert "ok   templates: valid in 15 languages (cs, da, de, en, es," in out
    assert "ok   relay:" in out
    assert relay.mails == []
    assert kanidm.sent() == []


READ_ONLY, READ_WRITE = api_token(purpose="readonly"), api_token(purpose="readwrite")


@pytest.mark.parametrize(
    ("token", "ready", "read_only", "code", "says"),
    [
        (TOKEN, True, True, ExitCode.NOT_DONE, "FAIL kanidm: the token may not set sent_at"),
        (
            READ_ONLY,
            False,
            True,
            ExitCode.NOT_DONE,
            "FAIL kanidm: the token is readonly",
        ),
        (
            READ_WRITE,
            False,
            False,
            ExitCode.OK,
            "ok   kanidm: the token may mark",
        ),
        (TOKEN, False, True, ExitCode.OK, "warn kanidm: whether the token may mark"),
    ],
    ids=["read-only-seen-on-a-message", "read-only-token", "read-write-token", "cannot-tell"],
)
async def test_check_finds_a_read_only_token_without_marking_anything(
    config_files: ConfigFiles,
    daemon_command: Command,
    kanidm: KanidmStandIn,
    token: str,
    ready: bool,
    read_only: bool,
    code: ExitCode,
    says: str,
) -> None:
    """A read-only token lists the queue, so a start would send a mail and then stop at
    its mark (403), and send it again at the next start: ``--check`` says so first, from
    the token or from what Kanidm says it may do to a ready message, and marks nothing."""
    kanidm.token = token
    kanidm.faults.read_only = read_only
    queued = [kanidm.queue_test_message("a@example.com")] if ready else []
    client, mail = config_files(token=token)
    got, out, _ = await in_process(daemon_command(client, mail, "--check"))
    assert got == code, out
    assert says in out
    assert not kanidm.mark_calls
    assert kanidm.unsent() == queued


async def test_check_reports_bad_token_and_bad_relay_password(
    config_files: ConfigFiles,
    daemon_command: Command,
    relay: SmtpStandIn,
) -> None:
    client, mail = config_files(token="wrong-token", mail_password="wrong")
    code, out, _ = await in_process(daemon_command(client, mail, "--check"))
    assert code == ExitCode.NOT_DONE
    assert "FAIL kanidm:" in out
    assert "401" in out
    assert "FAIL relay:" in out
    assert "wrong-token" not in out


@pytest.mark.parametrize(
    ("break_it", "code", "fail_line"),
    [
        (lambda client, mail: mail.unlink(), ExitCode.CONFIG, "FAIL configuration:"),
        (
            lambda client, mail: client.write_text(
                'uri = "https://127.0.0.1:1"\nca_path = "/no/ca"\n'
            ),
            ExitCode.CONFIG,
            "FAIL kanidm:",
        ),
        (
            lambda client, mail: mail.write_text(
                mail.read_text().replace("mail_ca_path = ", 'mail_ca_path = "/no/ca"\n#')
            ),
            ExitCode.CONFIG,
            "FAIL relay:",
        ),
    ],
    ids=["missing-config", "bad-ca_path", "bad-mail_ca_path"],
)
async def test_check_fails_as_a_start_would_with_a_fail_line(
    config_files: ConfigFiles,
    daemon_command: Command,
    break_it: Callable[[Path, Path], object],
    code: ExitCode,
    fail_line: str,
) -> None:
    """--check gives the exit code a normal start gives for the same fault, and says it."""
    client, mail = config_files()
    break_it(client, mail)
    got, out, err = await in_process(daemon_command(client, mail, "--check"))
    assert got == code, out + err
    assert fail_line in out
    assert "Traceback" not in out + err


async def test_check_as_root_refuses_as_the_daemon_does(
    config_files: ConfigFiles, daemon_command: Command
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the root check needs root")
    client, mail = config_files()
    command = [arg for arg in daemon_command(client, mail, "--check") if arg != "--skip-root-check"]
    code, out, _ = await in_process(command)
    assert code == ExitCode.ROOT
    assert "FAIL user: refusing to run as root" in out


async def test_a_metrics_port_that_cannot_be_bound_exits_3_in_one_line(
    config_files: ConfigFiles, daemon_command: Command
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        client, mail = config_files(metrics_listen=f"127.0.0.1:{port}")
        code, _, err = await run(daemon_command(client, mail))
    assert code == ExitCode.CONFIG
    assert f"mail-sender.toml: key 'metrics_listen': 127.0.0.1:{port}: cannot listen there" in err
    assert "Traceback" not in err


def _break_client_ca(client: Path, mail: Path) -> None:
    client.chmod(0o600)
    client.write_text(client.read_text().replace("ca_path = ", 'ca_path = "/no/ca.pem"\n#'))


# A value found wrong only after loading: (the mail-sender keys to set, or a change to make,
# the key, the file that holds it, the exit code, words of what to do).
LATE_REFUSALS = [
    ({"template_dir": "{tmp}/none"}, "template_dir", "mail", ExitCode.CONFIG, "or remove the key"),
    ({"mail_ca_path": "/no/ca.pem"}, "mail_ca_path", "mail", ExitCode.CONFIG, "point it at"),
    (_break_client_ca, "ca_path", "client", ExitCode.CONFIG, "point it at"),
    ({"schedule": "0 0 0 1 1 * 2020"}, "schedule", "mail", ExitCode.CONFIG, "give one that"),
    ({"state_dir": "{client}/state"}, "state_dir", "mail", ExitCode.STATE, "set state_dir"),
    ({"metrics_listen": "127.0.0.1:{taken}"}, "metrics_listen", "mail", ExitCode.CONFIG, "pick"),
    ({"mail_language": "tlh"}, "mail_language", "mail", ExitCode.CONFIG, "there are: cs, da, de"),
]


@pytest.mark.parametrize(
    ("change", "key", "holder", "code", "advice"),
    LATE_REFUSALS,
    ids=[row[1] for row in LATE_REFUSALS],
)
async def test_a_value_refused_after_loading_names_file_and_key_in_both_start_and_check(
    config_files: ConfigFiles,
    daemon_command: Command,
    tmp_path: Path,
    change: dict[str, str] | Callable[[Path, Path], None],
    key: str,
    holder: str,
    code: ExitCode,
    advice: str,
) -> None:
    """A start refuses in one line naming the file, the key, what is wrong and what to do;
    ``--check`` says the same in a FAIL line and exits with the same code, although Kanidm
    and the relay answer."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        client, mail = config_files()
        if callable(change):
            change(client, mail)
        else:
            slots = {"tmp": tmp_path, "client": client, "taken": taken.getsockname()[1]}
            client, mail = config_files(**{k: v.format(**slots) for k, v in change.items()})
        named = f"{client if holder == 'client' else mail}: key '{key}': "
        got, _, err = await run(daemon_command(client, mail))
        checked, out, _ = await in_process(daemon_command(client, mail, "--check"))
    assert (got, checked) == (code, code), err + out
    [refusal] = [line for line in err.splitlines() if named in line]
    assert advice in refusal
    [failed] = [line for line in out.splitlines() if named in line]
    assert failed.startswith("FAIL")
    assert advice in failed
    assert "Traceback" not in err + out
