"""The one-shot modes: ``-t`` (a test mail), ``--render`` (a sample mail) and ``--check``."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from uuid import UUID, uuid4

from kanidm_mail_sender.config.loading import Configs, load_configs, located
from kanidm_mail_sender.config.preflight import Identity, check_not_root
from kanidm_mail_sender.config.settings import TEMPLATE_KEYS, MailSenderConfig
from kanidm_mail_sender.config.statedir import resolve_state_dir, state_dir_named
from kanidm_mail_sender.core.addresses import check_address
from kanidm_mail_sender.core.catalogs import bcp47
from kanidm_mail_sender.core.mail import MailIdentity, build_message
from kanidm_mail_sender.core.messages import TestMessageV1
from kanidm_mail_sender.core.render import SAMPLE_MESSAGE_ID, Renderer, sample_template
from kanidm_mail_sender.errors import ConfigError, MailSenderError, PreflightError, RelayError
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.kanidm.client import KanidmClient
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.kanidm.token import TokenScope, may_modify, token_scope
from kanidm_mail_sender.smtp.auth import XOAuth2Auth
from kanidm_mail_sender.smtp.factory import make_relay
from kanidm_mail_sender.state.lock import STATE_DIR_ADVICE, lock_holder
from kanidm_mail_sender.state.place import ephemeral_dir, writable

__all__ = ["TEST_DISPLAY_NAME", "render_preview", "run_check", "send_test"]

TEST_DISPLAY_NAME = "KANIDM MAIL SENDER TEST"


def _renderer(config: MailSenderConfig) -> Renderer:
    return Renderer.checked(**config.template_settings())


def _every_language(config: MailSenderConfig) -> str:
    """Every template rendered with sample data in every language with a catalog."""
    renderer = _renderer(config)
    languages = renderer.languages()
    renderer.check_all(datetime.now(UTC), languages=languages)
    return f"valid in {len(languages)} languages ({', '.join(bcp47(n) for n in languages)})"


def _identity(config: MailSenderConfig, display_name: str | None = None) -> MailIdentity:
    return MailIdentity(
        display_name=display_name or config.instance_display_name,
        from_address=config.mail_from_address,
        reply_to_address=config.mail_reply_to_address,
    )


async def send_test(configs: Configs, address: str) -> str:
    """Send one test message to ``address`` without calling Kanidm; returns the relay reply."""
    config = configs.mail
    with configs.blame("schedule"):
        config.schedule.require_future(datetime.now(UTC))
    with configs.blame(*TEMPLATE_KEYS):
        renderer = _renderer(config)
    with configs.blame("mail_ca_path"):
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
        return (await relay.send(envelope)).reply
    finally:
        await relay.close()


def render_preview(configs: Configs, kind: str, language: str | None = None) -> bytes:
    """The complete mail that ``kind`` would produce for sample data, in ``language`` (a BCP
    47 tag; mail_language when None)."""
    config = configs.mail
    with configs.blame(*TEMPLATE_KEYS):
        renderer = _renderer(config)
    now = datetime.now(UTC)
    rendered = renderer.render(
        sample_template(kind, now),
        message_id=SAMPLE_MESSAGE_ID,
        destination="alice@example.com",
        language=language,
    )
    if rendered.unserved is not None:
        raise ConfigError(f"--language {renderer.unserved(str(language))}")
    return build_message(
        rendered,
        identity=_identity(config),
        destination="alice@example.com",
        message_id=SAMPLE_MESSAGE_ID,
        date=now,
    ).data


async def run_check(
    client_path: Path,
    mail_path: Path,
    *,
    environ: Mapping[str, str],
    ids: Identity,
    out: TextIO,
    skip_root_check: bool = False,
) -> ExitCode:
    """Check everything a first real send depends on; prints one line per check. Returns
    the exit code a normal start would give for the first failure (OK when none)."""
    failed: list[ExitCode] = []

    def line(status: str, what: str, detail: str, code: ExitCode = ExitCode.NOT_DONE) -> None:
        if status == "FAIL":
            failed.append(code)
        print(f"{status:<4} {what}: {detail}", file=out, flush=True)

    def verdict() -> ExitCode:
        # A start stops on a fault of its own (root, configuration, state directory) before
        # it meets Kanidm or the relay, whose refusals it would only retry.
        own = [code for code in failed if code != ExitCode.NOT_DONE]
        return (own or failed or [ExitCode.OK])[0]

    try:
        for warning in check_not_root(ids, skip=skip_root_check):
            line("warn", "user", warning)
    except PreflightError as exc:
        line("FAIL", "user", str(exc), ExitCode.ROOT)
    try:
        configs, warnings = load_configs(client_path, mail_path, environ=environ, ids=ids)
    except MailSenderError as exc:
        line("FAIL", "configuration", str(exc), ExitCode.CONFIG)
        return verdict()
    line("ok", "configuration", f"{client_path} and {mail_path} are valid")
    for warning in warnings:
        line("warn", "configuration", warning)
    config = configs.mail
    checks: list[tuple[str, tuple[str, ...], Callable[[], object]]] = [
        ("templates", TEMPLATE_KEYS, lambda: _every_language(config)),
        ("schedule", ("schedule",), lambda: config.schedule.require_future(datetime.now(UTC))),
    ]
    for name, keys, check in checks:
        try:
            with configs.blame(*keys):
                said = check()
        except MailSenderError as exc:
            line("FAIL", name, str(exc), ExitCode.CONFIG)
        else:
            line("ok", name, said if isinstance(said, str) else "valid")
    state_dir = resolve_state_dir(config, environ)
    if writable(state_dir):
        line("ok", "state directory", f"{state_dir} is writable")
    elif not state_dir_named(config, environ):
        line(
            "warn",
            "state directory",
            f"{state_dir} is not writable by uid {os.geteuid()}: the daemon will keep its "
            f"journal in {ephemeral_dir()}, which lasts only as long as this container; mount "
            "a volume there or set state_dir to keep it",
        )
    else:
        problem = f"{state_dir} is not writable by uid {os.geteuid()}; {STATE_DIR_ADVICE}"
        if config.state_dir is not None:
            problem = located(configs.where("state_dir"), "state_dir", problem)
        line("FAIL", "state directory", problem, ExitCode.STATE)
    _check_listener(configs, state_dir, line)
    await _check_kanidm(configs, line)
    await _check_relay(configs, line)
    return verdict()


def _check_listener(configs: Configs, state_dir: Path, line: Callable[..., None]) -> None:
    """``metrics_listen`` can be bound (bound and let go at once)."""
    listen = configs.mail.metrics_listen
    if listen is None:
        return
    try:
        socket.create_server((listen.host, listen.port)).close()
    except OSError as exc:
        holder = lock_holder(state_dir)
        if exc.errno == errno.EADDRINUSE and holder is not None:
            line("warn", "metrics", f"{listen} is in use, most likely by the daemon (pid {holder})")
            return
        problem = located(configs.where("metrics_listen"), "metrics_listen", listen.refusal(exc))
        line("FAIL", "metrics", problem, ExitCode.CONFIG)
    else:
        line("ok", "metrics", f"{listen} can be listened on")


async def _check_kanidm(configs: Configs, line: Callable[..., None]) -> None:
    """The token against Kanidm's queue (a bad ca_path is a configuration failure)."""
    try:
        with configs.blame("ca_path"):
            kanidm = make_kanidm(configs)
    except ConfigError as exc:
        line("FAIL", "kanidm", str(exc), ExitCode.CONFIG)
        return
    try:
        count, first = await kanidm.count_ready()
        line("ok", "kanidm", f"the token works; {count} message(s) ready")
        if count == 0:
            line(
                "warn",
                "kanidm",
                "an empty queue is also what a token outside "
                "idm_message_senders sees; check the account's group if mail never flows",
            )
        await _check_marking(configs.mail.token.get_secret_value(), kanidm, first, line)
    except MailSenderError as exc:
        line("FAIL", "kanidm", str(exc))
    finally:
        await kanidm.aclose()


_READ_ONLY = (
    "every mark-sent would get 403 and stop the daemon after its first mail, which the next "
    "start would send again; generate a token with `kanidm service-account api-token "
    "generate --readwrite` and put it in token"
)


async def _check_marking(
    token: str, kanidm: KanidmClient, first: UUID | None, line: Callable[..., None]
) -> None:
    """Whether the token may mark messages sent, found without marking any: from the
    token's own payload, else from what Kanidm says it may do to a ready message."""
    scope = token_scope(token)
    if scope in (TokenScope.READ_ONLY, TokenScope.SYNCHRONISE):
        line("FAIL", "kanidm", f"the token is {scope.value}: {_READ_ONLY}")
        return
    allowed = None
    if first is not None:
        allowed = may_modify(await kanidm.message(first, access_check=True))
    if allowed is False:
        line("FAIL", "kanidm", f"the token may not set sent_at (read-only?): {_READ_ONLY}")
    elif allowed or scope is TokenScope.READ_WRITE:
        line("ok", "kanidm", "the token may mark messages sent")
    else:
        line(
            "warn",
            "kanidm",
            "whether the token may mark messages sent cannot be told from a compact token "
            "with no message ready; it must be made with --readwrite (a read-only one stops "
            "the daemon at its first mark)",
        )


async def _check_relay(configs: Configs, line: Callable[..., None]) -> None:
    """Token (for XOAUTH2), TLS and AUTH with the relay, then the sending limits."""
    config = configs.mail
    limits = config.mail_rate_limit
    if limits:
        line("ok", "rate limit", ", ".join(str(rate) for rate in limits) + " across connections")
    try:
        with configs.blame("mail_ca_path"):
            relay = make_relay(config)
    except ConfigError as exc:  # an unreadable mail_ca_path, say
        line("FAIL", "relay", str(exc), ExitCode.CONFIG)
        return
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
