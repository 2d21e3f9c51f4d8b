"""Shared fixtures: certificates, the Kanidm and SMTP stand-ins, and an engine factory."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from kanidm_mail_sender.config.loading import Configs
from kanidm_mail_sender.config.settings import load_client_config, load_mail_config
from kanidm_mail_sender.core.mail import MailIdentity
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.engine.engine import Engine, EngineSettings
from kanidm_mail_sender.kanidm.client import KanidmClient
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.sandbox.certs import Certs, make_certs
from kanidm_mail_sender.sandbox.configs import write_configs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from kanidm_mail_sender.smtp.factory import make_auth
from kanidm_mail_sender.smtp.relay import SmtpRelay, build_tls_context
from kanidm_mail_sender.state.journal import Journal

TOKEN = "test-token-abc.def.ghi"
SMTP_AUTH = ("mailer", "s3cret-pässword")

_ENV_TO_CLEAR = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "KANIDM_DEBUG",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "KANIDM_MAIL_SENDER_LOG_FORMAT",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's trust and proxy variables must not change what a test sees."""
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def kanidm(certs: Certs) -> AsyncIterator[KanidmStandIn]:
    stand_in = KanidmStandIn(TOKEN)
    await stand_in.start(certs.server_context())
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def relay_factory(certs: Certs) -> AsyncIterator[Callable[..., Awaitable[SmtpStandIn]]]:
    started: list[SmtpStandIn] = []

    async def create(
        mode: str = "starttls", auth: tuple[str, str] | None = SMTP_AUTH, **kwargs: Any
    ) -> SmtpStandIn:
        stand_in = SmtpStandIn(certs, mode=mode, auth=auth, **kwargs)  # type: ignore[arg-type]
        await stand_in.start()
        started.append(stand_in)
        return stand_in

    yield create
    for stand_in in started:
        await stand_in.stop()


@pytest.fixture
async def relay(relay_factory: Callable[..., Awaitable[SmtpStandIn]]) -> SmtpStandIn:
    return await relay_factory()


@pytest.fixture
def config_files(
    tmp_path: Path, kanidm: KanidmStandIn, relay: SmtpStandIn, certs: Certs
) -> Callable[..., tuple[Path, Path]]:
    def create(**overrides: Any) -> tuple[Path, Path]:
        target = overrides.pop("relay", relay)
        token = overrides.pop("token", TOKEN)
        return write_configs(
            tmp_path / "config",
            kanidm_url=kanidm.url,
            token=token,
            relay=target,
            certs=certs,
            **overrides,
        )

    return create


class Harness:
    """An engine wired to the stand-ins, as the daemon wires it."""

    def __init__(
        self, engine: Engine, journal: Journal, client: KanidmClient, smtp: SmtpRelay
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.client = client
        self.smtp = smtp

    async def cycle(self) -> None:
        """One poll, then wait until everything it started has finished."""
        await self.engine.poll()
        await self.engine.idle()


@pytest.fixture
async def harness_factory(
    config_files: Callable[..., tuple[Path, Path]], tmp_path: Path
) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def create(
        settings: EngineSettings | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> Harness:
        client_path, mail_path = config_files(**overrides)
        client_config = load_client_config(client_path).config
        config = load_mail_config(mail_path, environ={}).config
        journal = Journal(config.state_dir or tmp_path / "state")
        client = make_kanidm(Configs(config, client_config))
        tls_context = build_tls_context(config.mail_ca_path)
        smtp = SmtpRelay(
            config.relay,
            tls_context=tls_context,
            auth=make_auth(config, tls_context),
            helo_name="sender.test",
            connect_timeout=5,
            command_timeout=config.mail_timeout_seconds,
            max_connections=config.mail_max_connections,
        )
        renderer = Renderer(
            instance_display_name=config.instance_display_name,
            instance_url=config.instance_url,
            template_dir=config.template_dir,
        )
        identity = MailIdentity(
            config.instance_display_name, config.mail_from_address, config.mail_reply_to_address
        )
        engine = Engine(
            source=client,
            transport=smtp,
            journal=journal,
            renderer=renderer,
            identity=identity,
            settings=settings
            or EngineSettings(
                send_workers=config.mail_max_connections,
                retry_initial=30,
                mark_retry_initial=0.05,
                mark_retry_max=0.2,
                list_retry_initial=0.01,
                list_retry_max=0.01,
                relay_pause_initial=0.05,
                relay_pause_max=0.2,
                throttle_initial=0.05,
                throttle_max=0.2,
                rate_limits=config.mail_rate_limit,
            ),
            clock=clock or time.time,
        )
        engine.start()
        harness = Harness(engine, journal, client, smtp)
        made.append(harness)
        return harness

    yield create
    for harness in made:
        await harness.engine.shutdown(0.5)
        await harness.smtp.close()
        await harness.client.aclose()
        harness.journal.close()


@pytest.fixture
def daemon_command() -> Callable[..., list[str]]:
    def command(client: Path, mail: Path, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "kanidm_mail_sender", "-c", str(client), "-m", str(mail)]
        if os.geteuid() == 0 or os.getegid() == 0:
            args.append("--skip-root-check")
        return [*args, *extra]

    return command
