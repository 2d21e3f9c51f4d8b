"""kaniop's pod, as its operator writes it: the daemon as uid 65534, the two files from a
Secret (root-owned, 0644) under a read-only /data/config-like directory, no state volume,
kaniop's exact config text (both relay forms; its ``0 */N`` schedule, here every second).
It must start and deliver, keeping its journal in the private fallback with one warning."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import SMTP_AUTH, TOKEN, wait_for

NOBODY = 65534

# Root's Python lives under /root (0700 here): everything is imported before the privileges
# go, then the daemon runs as nobody exactly as the CLI would.
_AS_NOBODY = f"""
import importlib, os, pkgutil, sys
import kanidm_mail_sender
for found in pkgutil.walk_packages(kanidm_mail_sender.__path__, "kanidm_mail_sender."):
    if not found.name.endswith("__main__"):
        importlib.import_module(found.name)
import encodings.idna
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
from kanidm_mail_sender.cli import main
sys.exit(main(sys.argv[1:], dict(os.environ)))
"""


# kaniop's spec.mailSender.schedule default; its fire times are in tests/core/test_schedule.py.
KANIOP_SCHEDULE = "0 */1 * * * * *"
# The same form, every second: the pods below need not wait for a whole minute.
EVERY_SECOND = "*/1 * * * * * *"


def _kaniop_mail_config(relay: str, schedule: str = KANIOP_SCHEDULE) -> str:
    """The mail-sender key of kaniop's Secret (reconcile/mail_sender.rs), with its schedule
    written as ``spec.mailSender.schedule`` writes it."""
    user, password = SMTP_AUTH
    return (
        f'token = "{TOKEN}"\n'
        'instance_display_name = "Kanidm"\n'
        'instance_url = "https://idm.example.com"\n'
        'mail_from_address = "idm@example.com"\n'
        'mail_reply_to_address = "support@example.com"\n'
        f'mail_relay = "{relay}"\n'
        f'mail_username = "{user}"\n'
        f'mail_password = "{password}"\n'
        "mail_connect_timeout_seconds = 10\n"
        f'schedule = "{schedule}"\n'
    )


@pytest.fixture
def pod_root() -> Iterator[Path]:
    """A directory nobody can traverse (pytest's own tmp is root's 0700)."""
    if os.geteuid() != 0:
        pytest.skip("becoming uid 65534 needs root")
    # Libraries import lazily (pydantic does): nobody must be able to reach them, as it can
    # the image's /opt venv. A venv in a 0700 directory is a test machine's limit, not ours.
    packages = Path(sysconfig.get_paths()["purelib"])
    closed = [d for d in (packages, *packages.parents) if not d.stat().st_mode & 0o001]
    if closed:
        pytest.skip(f"uid 65534 cannot enter {closed[-1]}, where this Python's packages are")
    root = Path(tempfile.mkdtemp(prefix="kaniop-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _pod(root: Path, name: str, kanidm_url: str, relay: str, certs: Certs) -> Path:
    config = root / name / "data" / "config"
    config.mkdir(parents=True)
    (config / "config").write_text(f'uri = "{kanidm_url}"\n')
    (config / "mail-sender").write_text(_kaniop_mail_config(relay, EVERY_SECOND))
    for path in (config / "config", config / "mail-sender"):
        path.chmod(0o644)  # the Secret's default mode, root-owned
    config.chmod(0o555)  # the mount is read-only
    temporary = root / name / "tmp"
    temporary.mkdir(mode=0o1777)
    temporary.chmod(0o1777)
    shutil.copy(certs.ca_path, root / name / "ca.pem")
    (root / name / "ca.pem").chmod(0o644)
    return root / name


async def _start_pod(pod: Path) -> asyncio.subprocess.Process:
    environ = {
        key: value
        for key, value in os.environ.items()
        if "COV" not in key and not key.startswith(("KANIDM", "STATE_DIR", "SSL_CERT"))
    }
    # kaniop's configs name no CA: the stand-ins' comes through the system store's variable.
    environ.update(TMPDIR=str(pod / "tmp"), SSL_CERT_FILE=str(pod / "ca.pem"))
    command = ["-c", str(pod / "data/config/config"), "-m", str(pod / "data/config/mail-sender")]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _AS_NOBODY,
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def test_kaniop_pod_as_nobody_starts_and_delivers_in_both_relay_forms(
    kanidm: KanidmStandIn,
    relay_factory: Callable[..., Awaitable[SmtpStandIn]],
    certs: Certs,
    pod_root: Path,
) -> None:
    second = KanidmStandIn(TOKEN)  # one Kanidm per pod: two active senders would both send
    await second.start(certs.server_context())
    implicit = await relay_factory(mode="smtps")
    starttls = await relay_factory(mode="starttls")
    # Kanidm 1.10's bare host (implicit TLS), and 1.11's URL.
    pods = [
        (_pod(pod_root, "bare", kanidm.url, f"127.0.0.1:{implicit.port}", certs), kanidm, implicit),
        (_pod(pod_root, "url", second.url, starttls.url, certs), second, starttls),
    ]
    queued = {
        id(stand_in): {
            stand_in.queue_credential_reset("alice@example.com"),
            stand_in.queue_test_message("bob@example.com"),
        }
        for _, stand_in, _ in pods
    }
    procs = [await _start_pod(pod) for pod, _, _ in pods]
    delivered = False
    try:
        try:
            await wait_for(lambda: not kanidm.unsent() and not second.unsent(), timeout=30)
            delivered = True
        except AssertionError:
            pass  # the daemons' own words say why, below
        for pod, stand_in, relay in pods if delivered else ():
            assert set(stand_in.sent()) == queued[id(stand_in)]
            assert sorted(m.rcpt_tos[0] for m in relay.mails) == [
                "alice@example.com",
                "bob@example.com",
            ]
            fallback = pod / "tmp" / f"kanidm-mail-sender-{NOBODY}"
            assert (fallback / "journal.sqlite3").stat().st_uid == NOBODY
            assert fallback.stat().st_mode & 0o777 == 0o700
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        outputs = [await asyncio.wait_for(proc.communicate(), 15) for proc in procs]
        await second.stop()
    texts = [err.decode() for _, err in outputs]
    assert delivered, "not delivered within 30 s:\n" + "\n".join(texts)
    for proc, text in zip(procs, texts, strict=True):
        assert proc.returncode == ExitCode.OK, text
        assert text.count("state.ephemeral") == 1, text
        assert "is not writable by uid 65534" in text


def test_nobody_looks_past_a_default_state_dir_it_cannot_enter(pod_root: Path) -> None:
    """The image's /var/lib/kanidm-mail-sender is 0700 for uid 10001: kaniop's uid 65534 (the
    image's health check, an operator command) finds the fallback instead of a traceback."""
    default = pod_root / "var-lib"
    default.mkdir(mode=0o700)
    (default / "lock").write_text("1\n")
    temporary = pod_root / "tmp"
    temporary.mkdir(mode=0o1777)
    temporary.chmod(0o1777)
    script = f"""
import os
from pathlib import Path
from kanidm_mail_sender.state.place import ephemeral_dir, find_state_dir, writable
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
root = Path({str(temporary)!r})
ephemeral_dir(root).mkdir(mode=0o700)
print(find_state_dir(Path({str(default)!r}), named=False, temp_root=root))
(ephemeral_dir(root) / "lock").write_text("1")
print(find_state_dir(Path({str(default)!r}), named=False, temp_root=root))
print(writable(Path({str(default / "inner")!r})))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    fallback = temporary / f"kanidm-mail-sender-{NOBODY}"
    # Nothing found anywhere: the default is named (its absence is the answer); then the fallback.
    assert done.stdout.split() == [str(default), str(fallback), "False"]
