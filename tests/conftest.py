"""Shared fixtures: certificates, the Kanidm and SMTP stand-ins, and an engine factory."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from kanidm_mail_sender.engine.engine import EngineSettings
from kanidm_mail_sender.sandbox.certs import Certs, make_certs
from kanidm_mail_sender.sandbox.configs import write_configs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import SMTP_AUTH, TOKEN, Harness

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
        harness = Harness.build(client_path, mail_path, tmp_path / "state", settings, clock)
        made.append(harness)
        return harness

    yield create
    for harness in made:
        await harness.close()


@pytest.fixture
def daemon_command() -> Callable[..., list[str]]:
    def command(client: Path, mail: Path, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "kanidm_mail_sender", "-c", str(client), "-m", str(mail)]
        if os.geteuid() == 0 or os.getegid() == 0:
            args.append("--skip-root-check")
        return [*args, *extra]

    return command
