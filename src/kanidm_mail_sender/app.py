"""Wiring: builds the daemon's parts from the two config files and runs one of the modes."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from uuid import uuid4

import structlog

from kanidm_mail_sender.addresses import check_address
from kanidm_mail_sender.config import (
    ClientConfig,
    Loaded,
    MailSenderConfig,
    load_client_config,
    load_mail_config,
    resolve_state_dir,
    split_listen,
)
from kanidm_mail_sender.daemon import run_daemon
from kanidm_mail_sender.engine import CANCEL_DEADLINE, Engine, EngineSettings
from kanidm_mail_sender.errors import (
    MailSenderError,
    RelayError,
    ScheduleError,
)
from kanidm_mail_sender.httpserver import HttpServer
from kanidm_mail_sender.journal import Journal
from kanidm_mail_sender.kanidm import KanidmClient, ListLimits, build_http_client
from kanidm_mail_sender.limits import raise_open_files_limit
from kanidm_mail_sender.mail import MailIdentity, build_message
from kanidm_mail_sender.messages import TestMessageV1
from kanidm_mail_sender.metrics import Metrics, start_metrics_server
from kanidm_mail_sender.pipeline import build_mark_pipeline, proxied
from kanidm_mail_sender.preflight import Identity, check_config_file
from kanidm_mail_sender.relay import SmtpRelay, build_tls_context
from kanidm_mail_sender.render import SAMPLE_MESSAGE_ID, Renderer, sample_template
from kanidm_mail_sender.schedule import Schedule, parse_schedule
from kanidm_mail_sender.sdnotify import Notifier
from kanidm_mail_sender.signals import HardExit, handle_signals
from kanidm_mail_sender.smtp_auth import PasswordAuth, SmtpAuth, XOAuth2Auth

__all__ = [
    "TEST_DISPLAY_NAME",
    "Configs",
    "load_configs",
    "make_auth",
    "make_kanidm",
    "make_relay",
    "make_renderer",
    "render_preview",
    "run_check",
    "run_main",
    "send_test",
]

log = structlog.get_logger("kanidm_mail_sender")

TEST_DISPLAY_NAME = "KANIDM MAIL SENDER TEST"


@dataclass(frozen=True)
class Configs:
    """Both validated config files."""

    mail: MailSenderConfig
    client: ClientConfig


def load_configs(
    client_path: Path, mail_path: Path, *, environ: Mapping[str, str], ids: Identity
) -> tuple[Configs, list[str]]:
    """Check and load both files; returns the configs and every warning found."""
    warnings = check_config_file(client_path, ids, holds_secrets=False)
    warnings += check_config_file(mail_path, ids, holds_secrets=True)
    client: Loaded[ClientConfig] = load_client_config(client_path)
    mail: Loaded[MailSenderConfig] = load_mail_config(mail_path, environ=environ)
    return Configs(mail.config, client.config), warnings + client.warnings + mail.warnings


def make_renderer(config: MailSenderConfig) -> Renderer:
    """The renderer, with every template rendered once with sample data."""
    renderer = Renderer(
        instance_display_name=config.instance_display_name,
        instance_url=config.instance_url,
        template_dir=config.template_dir,
    )
    renderer.check_all(datetime.now(UTC))
    return renderer


def make_auth(config: MailSenderConfig, tls_context: ssl.SSLContext) -> SmtpAuth | None:
    """How relay connections authenticate: XOAUTH2, a password, or not at all."""
    oauth2 = config.oauth2()
    if oauth2 is not None:
        # Imported here: Authlib and its JOSE stack cost about 10 MB and 0.2 s at start,
        # which a relay with a password (most of them) should not pay.
        from kanidm_mail_sender.oauth import TokenSource

        # The token endpoint is trusted as the relay is: system store plus mail_ca_path.
        tokens = TokenSource(oauth2, tls_context=tls_context, timeout=config.http_timeout_seconds)
        return XOAuth2Auth(oauth2.username, tokens)
    credentials = config.credentials()
    return PasswordAuth(*credentials) if credentials is not None else None


def make_relay(config: MailSenderConfig) -> SmtpRelay:
    """The SMTP relay pool described by the config."""
    tls_context = build_tls_context(config.mail_ca_path)
    return SmtpRelay(
        config.relay,
        tls_context=tls_context,
        auth=make_auth(config, tls_context),
        helo_name=config.helo_name(),
        connect_timeout=config.mail_connect_timeout_seconds,
        command_timeout=config.mail_timeout_seconds,
        max_connections=config.mail_max_connections,
    )


def _identity(config: MailSenderConfig, display_name: str | None = None) -> MailIdentity:
    return MailIdentity(
        display_name=display_name or config.instance_display_name,
        from_address=config.mail_from_address,
        reply_to_address=config.mail_reply_to_address,
    )


def _schedule(config: MailSenderConfig) -> Schedule:
    schedule = parse_schedule(config.schedule)
    if schedule.next_after(datetime.now(UTC)) is None:
        raise ScheduleError(
            f"schedule {config.schedule!r} has no fire time in the future; "
            "nothing would ever be sent"
        )
    return schedule


def make_kanidm(configs: Configs) -> KanidmClient:
    """The Kanidm client: httpx for listing, the pipeline for marks unless turned off."""
    mail, token = configs.mail, configs.mail.token.get_secret_value()
    http = build_http_client(
        configs.client,
        token,
        timeout=mail.http_timeout_seconds,
        max_connections=max(8, mail.mail_max_connections * 2),
    )
    limits = ListLimits(
        timeout=mail.http_list_timeout_seconds, max_bytes=mail.http_list_max_mib << 20
    )
    if not mail.http_pipelining:
        return KanidmClient(http, limits=limits)
    if proxied(configs.client.base_url):
        log.info(
            "kanidm.pipelining_off",
            reason="an HTTPS proxy is set in the environment; "
            "marks go through it one request at a time",
        )
        return KanidmClient(http, limits=limits)
    return KanidmClient(
        http,
        build_mark_pipeline(configs.client, token, timeout=mail.http_timeout_seconds),
        limits=limits,
    )


async def send_test(configs: Configs, address: str) -> str:
    """Send one test message to ``address`` without calling Kanidm; returns the relay reply."""
    config = configs.mail
    _schedule(config)
    renderer = make_renderer(config)
    relay = make_relay(config)
    message_id = uuid4()
    rendered = renderer.render(
        TestMessageV1(TEST_DISPLAY_NAME), message_id=message_id, destination=address
    )
    try:
        check_address(address)
    except ValueError as exc:
        raise RelayError(f"cannot send to {address!r}: {exc}") from None
    envelope = build_message(
        rendered,
        identity=_identity(config),
        destination=address,
        message_id=message_id,
        date=datetime.now(UTC),
    )
    try:
        return await relay.send(envelope)
    finally:
        await relay.close()


def render_preview(config: MailSenderConfig, kind: str) -> bytes:
    """The complete mail that ``kind`` would produce for sample data."""
    renderer = make_renderer(config)
    now = datetime.now(UTC)
    rendered = renderer.render(
        sample_template(kind, now), message_id=SAMPLE_MESSAGE_ID, destination="alice@example.com"
    )
    return build_message(
        rendered,
        identity=_identity(config),
        destination="alice@example.com",
        message_id=SAMPLE_MESSAGE_ID,
        date=now,
    ).data


async def run_check(
    client_path: Path, mail_path: Path, *, environ: Mapping[str, str], ids: Identity, out: TextIO
) -> bool:
    """Check everything a first real send depends on; prints one line per check."""
    ok = True

    def line(status: str, what: str, detail: str) -> None:
        nonlocal ok
        ok = ok and status != "FAIL"
        print(f"{status:<4} {what}: {detail}", file=out, flush=True)

    try:
        configs, warnings = load_configs(client_path, mail_path, environ=environ, ids=ids)
    except MailSenderError as exc:
        line("FAIL", "configuration", str(exc))
        return False
    line("ok", "configuration", f"{client_path} and {mail_path} are valid")
    for warning in warnings:
        line("warn", "configuration", warning)
    config = configs.mail
    checks: list[tuple[str, Callable[[], object]]] = [
        ("templates", lambda: make_renderer(config)),
        ("schedule", lambda: _schedule(config)),
    ]
    for name, check in checks:
        try:
            check()
        except MailSenderError as exc:
            line("FAIL", name, str(exc))
        else:
            line("ok", name, "valid")
    state_dir = resolve_state_dir(config, environ)
    if os.access(state_dir, os.W_OK) or (
        not state_dir.exists() and os.access(state_dir.parent, os.W_OK)
    ):
        line("ok", "state directory", f"{state_dir} is writable")
    else:
        line("FAIL", "state directory", f"{state_dir} is not writable by this user")
    kanidm = make_kanidm(configs)
    try:
        count = await kanidm.count_ready()
    except MailSenderError as exc:
        line("FAIL", "kanidm", str(exc))
    else:
        line("ok", "kanidm", f"the token works; {count} message(s) ready")
        if count == 0:
            line(
                "warn",
                "kanidm",
                "an empty queue is also what a token outside "
                "idm_message_senders sees; check the account's group if mail never flows",
            )
    finally:
        await kanidm.aclose()
    await _check_relay(config, line)
    return ok


async def _check_relay(config: MailSenderConfig, line: Callable[[str, str, str], None]) -> None:
    """Token (for XOAUTH2), TLS and AUTH with the relay, then the sending limits."""
    limits = config.mail_rate_limit
    if limits:
        line("ok", "rate limit", ", ".join(str(rate) for rate in limits) + " across connections")
    relay = make_relay(config)
    try:
        if isinstance(relay.auth, XOAuth2Auth):
            settings = relay.auth.tokens.settings
            try:
                token = await relay.auth.tokens.current()
            except MailSenderError as exc:
                line("FAIL", "oauth2", f"{settings.grant.value} grant: {exc}")
                return
            line(
                "ok",
                "oauth2",
                f"{settings.grant.value} grant: token from {settings.token_url} for "
                f"{settings.username}: lives {round(token.lifetime)} s, scopes granted: "
                f"{token.scope or '(not stated)'}",
            )
        await relay.check()
    except MailSenderError as exc:
        line("FAIL", "relay", f"{config.relay.describe()}: {exc}")
    else:
        auth = relay.auth.describe() if relay.auth else "no authentication configured"
        line("ok", "relay", f"{config.relay.describe()}: TLS verified, {auth}")
    finally:
        await relay.close()


async def run_main(
    configs: Configs, *, environ: Mapping[str, str], hard_exit: HardExit | None = None
) -> None:
    """Run the daemon until a stop signal; raises on fatal errors."""
    config = configs.mail
    schedule = _schedule(config)
    renderer = make_renderer(config)
    raise_open_files_limit()
    journal = Journal(resolve_state_dir(config, environ))
    metrics = Metrics()
    kanidm = make_kanidm(configs)
    settings = EngineSettings(
        send_workers=config.mail_max_connections,
        retry_initial=config.retry_initial_seconds,
        retry_max=config.retry_max_seconds,
        relay_probe_interval=120.0 if config.metrics_listen else None,
        rate_limits=config.mail_rate_limit,
    )
    relay = make_relay(config)
    engine = Engine(
        source=kanidm,
        transport=relay,
        journal=journal,
        renderer=renderer,
        identity=_identity(config),
        settings=settings,
        metrics=metrics,
    )
    server = None
    stop = asyncio.Event()
    on_repeat = hard_exit.force if hard_exit is not None else None
    try:
        with handle_signals(stop, on_repeat) as received:
            if config.metrics_listen:
                host, port = split_listen(config.metrics_listen)
                server = await start_metrics_server(metrics, host, port)
                log.info("metrics.listening", address=config.metrics_listen)
            log.info(
                "daemon.started",
                kanidm=configs.client.base_url,
                relay=config.relay.describe(),
                schedule=config.schedule,
                state_dir=str(journal.state_dir),
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
