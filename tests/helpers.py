"""Helpers the tests share: the engine harness (built from the package's own factories),
subprocess runners, polling, and small builders. Tests import them from here only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import structlog

from kanidm_mail_sender.cli import main
from kanidm_mail_sender.config.loading import Configs, load_client_config, load_mail_config
from kanidm_mail_sender.core.mail import Envelope, MailIdentity, build_message
from kanidm_mail_sender.core.messages import TestMessageV1
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.engine.dispatch import DispatchSettings
from kanidm_mail_sender.engine.engine import Engine, EngineSettings
from kanidm_mail_sender.engine.health import HealthSettings
from kanidm_mail_sender.engine.marking import MarkSettings
from kanidm_mail_sender.engine.sending import SendSettings
from kanidm_mail_sender.errors import StateError
from kanidm_mail_sender.kanidm.client import KanidmClient
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.runtime.wiring import build_engine, renderer_for
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from kanidm_mail_sender.smtp.factory import make_relay
from kanidm_mail_sender.smtp.relay import SmtpRelay
from kanidm_mail_sender.state.journal import Journal
from kanidm_mail_sender.state.view import HistoryRow, JournalView

ROOT = Path(__file__).resolve().parent.parent  # the checkout
TOKEN = "test-token-abc.def.ghi"
SMTP_AUTH = ("mailer", "s3cret-pässword")


def fast_settings(
    send_workers: int = 4, *, pause: tuple[float, float] = (0.05, 0.2), **overrides: Any
) -> EngineSettings:
    """The engine's settings with pauses and backoffs short enough for a test: ``pause`` is
    the relay's first and longest pause, ``overrides`` the engine's own fields."""
    settings = EngineSettings(
        health=HealthSettings(
            max_concurrency=send_workers,
            pause_initial=pause[0],
            pause_max=pause[1],
            throttle_initial=0.05,
            throttle_max=0.2,
        ),
        send=SendSettings(retry_initial=30),
        marks=MarkSettings(retry_initial=0.05, retry_max=0.2),
        dispatch=DispatchSettings(list_retry_initial=0.01, list_retry_max=0.01),
    )
    return replace(settings, **overrides)


def with_workers(settings: EngineSettings, send_workers: int) -> EngineSettings:
    """``settings`` with this many send workers (and relay connections)."""
    return replace(settings, health=replace(settings.health, max_concurrency=send_workers))


class Harness:
    """An engine wired to the stand-ins exactly as the daemon wires it."""

    def __init__(
        self, engine: Engine, journal: Journal, client: KanidmClient, smtp: SmtpRelay
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.client = client
        self.smtp = smtp

    @classmethod
    def build(
        cls,
        client_path: Path,
        mail_path: Path,
        state_dir: Path,
        settings: EngineSettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Harness:
        """The engine of the two config files, with test pacing unless ``settings``."""
        config = load_mail_config(mail_path, environ={}).config
        configs = Configs(config, load_client_config(client_path).config)
        journal = Journal(config.state_dir or state_dir)
        client, smtp = make_kanidm(configs), make_relay(config)
        engine = build_engine(
            configs,
            renderer=renderer_for(config),
            journal=journal,
            kanidm=client,
            relay=smtp,
            settings=settings
            or fast_settings(config.mail_max_connections, rate_limits=config.mail_rate_limit),
            clock=clock or time.time,
        )
        engine.start()
        return cls(engine, journal, client, smtp)

    async def cycle(self) -> None:
        """One poll, then wait until everything it started has finished."""
        await self.engine.poll()
        await self.engine.idle()

    async def close(self) -> None:
        """Stop the engine and close what it used."""
        await self.engine.shutdown(0.5)
        await self.smtp.close()
        await self.client.aclose()
        self.journal.close()


def env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that would change a daemon's view."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KANIDM", "SSL_CERT", "CREDENTIALS", "STATE_DIR", "NOTIFY"))
    }
    return {**base, **extra}


async def run(
    args: list[str], *, environ: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    """Run a command to its end; returns its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ or env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


_MODULE = ["-m", "kanidm_mail_sender"]


async def in_process(
    args: list[str], *, environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """What ``run(args)`` gives, with ``main(argv, environ)`` called in this process (in a
    thread, so that stand-ins on this event loop answer it): exit code, stdout, stderr."""
    argv = args[3:] if args[1:3] == _MODULE else args
    out, err = io.TextIOWrapper(io.BytesIO(), "utf-8"), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return main(argv, environ if environ is not None else env())
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                return exc.code if isinstance(exc.code, int) else 2
            finally:
                structlog.reset_defaults()

    code = await asyncio.wait_for(asyncio.to_thread(call), 60)
    out.flush()
    assert isinstance(out.buffer, io.BytesIO)
    return code, out.buffer.getvalue().decode(), err.getvalue()


async def start(args: list[str]) -> asyncio.subprocess.Process:
    """Start a command in the background, its output piped."""
    return await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env()
    )


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal a started process and wait (bounded) for its end; returns code and stderr."""
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Poll ``condition`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def journal_counts(journal: Journal) -> dict[str, int]:
    """Rows per state in the journal, read as the operator commands read it."""
    view = JournalView(journal.state_dir)
    try:
        return view.counts(since=0)
    finally:
        view.close()


def delivered(relay: SmtpStandIn) -> Counter[str]:
    """How many mails the relay took for each recipient."""
    return Counter(rcpt for mail in relay.mails for rcpt in mail.rcpt_tos)


def envelope(to: str = "rcpt@example.com") -> Envelope:
    """A rendered test mail to ``to``."""
    renderer = Renderer(instance_display_name="Kanidm", instance_url="https://idm.example.com")
    message_id = uuid4()
    rendered = renderer.render(TestMessageV1("Rita"), message_id=message_id, destination=to)
    return build_message(
        rendered,
        identity=MailIdentity("Kanidm", "idm@example.com", "help@example.com"),
        destination=to,
        message_id=message_id,
        date=datetime.now(UTC),
    )


def journalled(state_dir: Path) -> list[HistoryRow]:
    """What a running daemon's journal holds now, read as the operator commands read it;
    nothing while the daemon has not yet made it."""
    try:
        view = JournalView(state_dir)
    except StateError:
        return []
    try:
        return view.rows()
    finally:
        view.close()


def jws(payload: bytes) -> str:
    """A compact JWS around ``payload`` (its signature is for the stand-in to compare)."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([part(b'{"alg":"ES256"}'), part(payload), part(b"signature")])


def api_token(**fields: Any) -> str:
    """An API token in Kanidm's full JSON form, with ``fields`` (``purpose``) set."""
    body = {"account_id": "a", "token_id": "t", "label": "mail", "issued_at": 0, **fields}
    return jws(json.dumps(body).encode())
