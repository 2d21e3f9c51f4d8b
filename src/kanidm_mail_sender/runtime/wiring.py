"""Wiring: builds the daemon's parts from the two config files and runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from kanidm_mail_sender.config.loading import Configs
from kanidm_mail_sender.config.settings import TEMPLATE_KEYS, MailSenderConfig
from kanidm_mail_sender.config.statedir import resolve_state_dir, state_dir_named
from kanidm_mail_sender.core.mail import MailIdentity
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.engine.dispatch import DispatchSettings
from kanidm_mail_sender.engine.engine import CANCEL_DEADLINE, Engine, EngineSettings
from kanidm_mail_sender.engine.health import HealthSettings
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.engine.sending import SendSettings
from kanidm_mail_sender.errors import AlreadyRunning, StateError
from kanidm_mail_sender.kanidm.client import KanidmClient
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.runtime.daemon import run_daemon
from kanidm_mail_sender.runtime.httpserver import HttpServer
from kanidm_mail_sender.runtime.limits import raise_open_files_limit
from kanidm_mail_sender.runtime.listener import start_metrics_server
from kanidm_mail_sender.runtime.sdnotify import Notifier
from kanidm_mail_sender.runtime.signals import HardExit, handle_signals
from kanidm_mail_sender.smtp.factory import make_relay
from kanidm_mail_sender.smtp.relay import SmtpRelay
from kanidm_mail_sender.state.journal import Journal
from kanidm_mail_sender.state.place import settle_state_dir
from kanidm_mail_sender.state.retries import prepare_requests

__all__ = ["build_engine", "engine_settings", "renderer_for", "run_main"]

log = get_logger(__name__)

# With a health port, an idle relay is probed this often so that /readyz stays true.
RELAY_PROBE_INTERVAL = 120.0


def _identity(config: MailSenderConfig) -> MailIdentity:
    return MailIdentity(
        display_name=config.instance_display_name,
        from_address=config.mail_from_address,
        reply_to_address=config.mail_reply_to_address,
    )


def engine_settings(config: MailSenderConfig) -> EngineSettings:
    """The engine's settings from the mail-sender config: the one place the config's keys
    meet the stages' settings."""
    return EngineSettings(
        health=HealthSettings(max_concurrency=config.mail_max_connections),
        send=SendSettings(
            retry_initial=config.retry_initial_seconds, retry_max=config.retry_max_seconds
        ),
        dispatch=DispatchSettings(standby_delay=config.standby_delay_seconds),
        rate_limits=config.mail_rate_limit,
        relay_probe_interval=RELAY_PROBE_INTERVAL if config.metrics_listen else None,
    )


def renderer_for(config: MailSenderConfig) -> Renderer:
    """The renderer of the config's templates, every one rendered once with sample data."""
    return Renderer.checked(**config.template_settings())


def _open_journal(configs: Configs, path: Path) -> Journal:
    """The journal in ``path``; a state directory the config names that cannot be used is
    refused naming the file and the key."""
    if configs.mail.state_dir is None:  # the default, or systemd's: named in the message
        return Journal(path)
    with configs.blame("state_dir", errors=(StateError,), but=(AlreadyRunning,)):
        return Journal(path)


async def _make_peers(configs: Configs) -> tuple[KanidmClient, SmtpRelay]:
    """Kanidm's client and the relay; a CA file that cannot be loaded names its file and key."""
    with configs.blame("ca_path"):
        kanidm = make_kanidm(configs)
    try:
        with configs.blame("mail_ca_path"):
            return kanidm, make_relay(configs.mail)
    except BaseException:
        await kanidm.aclose()
        raise


def build_engine(
    configs: Configs,
    *,
    renderer: Renderer,
    journal: Journal,
    kanidm: KanidmClient,
    relay: SmtpRelay,
    settings: EngineSettings | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
) -> Engine:
    """The engine on the given parts; the daemon and the tests build it here, so their
    wiring cannot drift apart."""
    config = configs.mail
    return Engine(
        source=kanidm,
        transport=relay,
        journal=journal,
        renderer=renderer,
        identity=_identity(config),
        settings=settings or engine_settings(config),
        metrics=metrics,
        clock=clock,
    )


async def run_main(
    configs: Configs, *, environ: Mapping[str, str], hard_exit: HardExit | None = None
) -> None:
    """Run the daemon until a stop signal; raises on fatal errors."""
    config = configs.mail
    with configs.blame("schedule"):
        schedule = config.schedule.require_future(datetime.now(UTC))
    with configs.blame(*TEMPLATE_KEYS):
        renderer = renderer_for(config)  # a broken template is exit 3 before the journal opens
    raise_open_files_limit()
    place = settle_state_dir(
        resolve_state_dir(config, environ),
        named=state_dir_named(config, environ),
        environ=environ,
    )
    if place.warning:
        log.warning("state.ephemeral", detail=place.warning)
    journal = _open_journal(configs, place.path)
    try:
        prepare_requests(place.path)
        kanidm, relay = await _make_peers(configs)
    except BaseException:
        journal.close()
        raise
    metrics = Metrics()
    engine = build_engine(
        configs, renderer=renderer, journal=journal, kanidm=kanidm, relay=relay, metrics=metrics
    )
    server = None
    stop = asyncio.Event()
    on_repeat = hard_exit.force if hard_exit is not None else None
    try:
        with handle_signals(stop, on_repeat) as received:
            listen = config.metrics_listen
            if listen is not None:
                with configs.blame("metrics_listen"):
                    server = await start_metrics_server(metrics, engine.view, listen)
                log.info("metrics.listening", address=str(listen))
            log.info(
                "daemon.started",
                kanidm=configs.client.base_url,
                relay=config.relay.describe(),
                schedule=config.schedule.expression,
                state_dir=str(journal.state_dir),
                standby_delay_seconds=config.standby_delay_seconds,
            )
            await run_daemon(
                engine,
                schedule,
                stop,
                journal=journal,
                grace=config.shutdown_grace_seconds,
                notifier=Notifier(environ),
                hard_exit=hard_exit,
            )
            if received:
                log.info("daemon.stopped", signal=received[0])
            await _close(server, relay, kanidm)
    finally:
        journal.close(wait=engine.fatal is None)
    if engine.fatal is not None:
        raise engine.fatal


async def _close(server: HttpServer | None, relay: SmtpRelay, kanidm: KanidmClient) -> None:
    """Close the listener and both clients, all within one bound."""
    closers = [relay.close(), kanidm.aclose()]
    if server is not None:
        closers.append(server.close())
    tasks = [asyncio.ensure_future(closer) for closer in closers]
    _, pending = await asyncio.wait(tasks, timeout=CANCEL_DEADLINE)
    for task in pending:
        task.cancel()
