"""The command line; the only place that turns errors into exit codes.

Exit codes:
  0  success (daemon stopped by SIGINT/SIGTERM, test mail accepted, --check passed)
  1  fatal runtime error (Kanidm refused the token, journal write failed, internal error)
  2  usage error (unknown flag, bad KANIDM_DEBUG value)
  3  configuration error (file missing or invalid, bad template, schedule never fires)
  4  refused to start: running as root
  5  the test mail (-t) was not accepted, or --check found a problem
  6  another instance holds the state directory lock, or it is not writable

--probe exits 0 when healthy and 1 when not.

Operator commands (status, queue, history, show, retry): 0 done (status: a daemon runs and its
last poll worked), 1 Kanidm failed (status: no daemon, or its last poll failed), 3
configuration, 5 not possible as asked (retry of an accepted or expired destination, show of
an unknown message), 6 the journal cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from kanidm_mail_sender import __version__
from kanidm_mail_sender.config.loading import Configs, load_configs
from kanidm_mail_sender.config.preflight import Identity, check_not_root
from kanidm_mail_sender.config.settings import DEFAULT_CLIENT_CONFIG, DEFAULT_MAIL_CONFIG
from kanidm_mail_sender.core.messages import TEMPLATE_KINDS
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, REJECTED
from kanidm_mail_sender.errors import (
    ConfigError,
    JournalFailed,
    MailSenderError,
    PreflightError,
    RelayError,
    StateError,
)
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.logs import configure_logging, get_logger
from kanidm_mail_sender.ops.durations import parse_since
from kanidm_mail_sender.ops.probe import probe

__all__ = ["main"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanidm-mail-sender",
        description="Send the mail queued in Kanidm (credential resets, test messages) "
        "through a TLS SMTP relay.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flags, variable, default, what in (
        (("-c", "--client-config"), "KANIDM_CLIENT_CONFIG", DEFAULT_CLIENT_CONFIG, "Kanidm client"),
        (
            ("-m", "--mail-sender-config"),
            "KANIDM_MAIL_SENDER_CONFIG",
            DEFAULT_MAIL_CONFIG,
            "mail sender",
        ),
    ):
        parser.add_argument(
            *flags,
            type=Path,
            default=Path(environ.get(variable) or default),
            metavar="PATH",
            help=f"{what} config (default: ${variable}, else {default}; now %(default)s)",
        )
    parser.add_argument(
        "-t", "--test-email", metavar="ADDRESS", help="send one test message to ADDRESS and exit"
    )
    parser.add_argument(
        "-d",
        "--debug",
        action="store_true",
        default=None,
        help="debug logging (also env KANIDM_DEBUG=true/1/yes/on)",
    )
    parser.add_argument("-s", "--skip-root-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--render",
        metavar="KIND",
        choices=TEMPLATE_KINDS,
        help=f"print the mail KIND would produce for sample data "
        f"({', '.join(TEMPLATE_KINDS)}) and exit",
    )
    parser.add_argument(
        "--language",
        metavar="TAG",
        help="with --render: the language of the preview (BCP 47, e.g. de or pt-BR); "
        "default mail_language",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check configs, templates, Kanidm and the relay, then exit",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="health probe for containers: one line, exit 0 when healthy, 1 when not",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _subcommands(parser)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> None:
    """The operator's commands; -c and -m may also come after the command's name."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a flag given before the command's name must not be reset by these defaults.
    common.add_argument("-c", "--client-config", type=Path, default=argparse.SUPPRESS)
    common.add_argument("-m", "--mail-sender-config", type=Path, default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="JSON instead of a table")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser(
        "status", parents=[common], help="the daemon, its last poll, the relay, the journal"
    )
    status.add_argument("--offline", action="store_true", help="do not ask Kanidm")
    commands.add_parser(
        "queue", parents=[common], help="what Kanidm holds now, with each destination's state"
    )
    history = commands.add_parser(
        "history", parents=[common], help="one row per message and destination"
    )
    history.add_argument("--state", choices=[ACCEPTED, DEFERRED, REJECTED, EXPIRED])
    history.add_argument("--since", type=parse_since, metavar="DURATION", help="e.g. 2h, 30m")
    history.add_argument("--to", metavar="ADDRESS", help="only this destination")
    show = commands.add_parser("show", parents=[common], help="everything about one message")
    show.add_argument("message_id", type=UUID, metavar="MESSAGE_ID")
    show.add_argument("--offline", action="store_true", help="do not ask Kanidm")
    retry = commands.add_parser(
        "retry", parents=[common], help="send a failed or waiting destination at the next poll"
    )
    retry.add_argument("message_id", type=UUID, metavar="MESSAGE_ID")
    retry.add_argument("destination", nargs="?", metavar="DESTINATION")
    retry.add_argument(
        "--resend", action="store_true", help="also mail a destination the relay accepted"
    )
    retry.add_argument("--offline", action="store_true", help="do not ask Kanidm")


def _operator(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run one operator command; the same exit codes as the daemon where they apply."""
    # Kanidm's client, loaded here: not for --probe.
    from kanidm_mail_sender.ops.commands import run_command
    from kanidm_mail_sender.ops.context import Context

    ctx = Context(
        client_config=args.client_config,
        mail_config=args.mail_sender_config,
        environ=environ,
        out=sys.stdout,
        as_json=args.json,
        offline=getattr(args, "offline", False),
    )
    try:
        return _run(run_command(args, ctx))
    except ConfigError as exc:
        print(f"configuration: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except StateError as exc:
        print(f"state: {exc}", file=sys.stderr)
        return ExitCode.STATE
    except MailSenderError as exc:
        print(f"kanidm: {exc}", file=sys.stderr)
        return ExitCode.FATAL


def _debug(flag: bool | None, environ: Mapping[str, str], parser: argparse.ArgumentParser) -> bool:
    if flag:
        return True
    value = environ.get("KANIDM_DEBUG", "").strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        parser.error(f"KANIDM_DEBUG={value!r}: use true/false, 1/0, yes/no or on/off")
    return False


def _json_logs(environ: Mapping[str, str], configured: str | None) -> bool:
    chosen = environ.get("KANIDM_MAIL_SENDER_LOG_FORMAT", "").strip().lower() or configured
    return chosen == "json"


T = TypeVar("T")


_LEFTOVER_DEADLINE = 1.0


# Turns of the loop that an aborted socket needs to close (TLS first, then its TCP socket).
_CLOSING_TURNS = 8


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio's own loop.

    Unlike ``asyncio.run``, tasks left over at the end get a bounded time to finish: one that
    swallows its cancellation must not keep the process alive.
    """
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=_LEFTOVER_DEADLINE))
            ender = loop.create_task(loop.shutdown_asyncgens())
            loop.run_until_complete(asyncio.wait([ender], timeout=_LEFTOVER_DEADLINE))
            for _ in range(_CLOSING_TURNS):  # sockets aborted just now close in these turns
                loop.run_until_complete(asyncio.sleep(0))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``kanidm-mail-sender``; returns the exit code."""
    env = os.environ if environ is None else environ
    parser = _parser(env)
    args = parser.parse_args(argv)
    if args.command is not None:
        return _operator(args, env)
    if args.probe:
        healthy, why = probe(args.mail_sender_config, env)
        print(f"{'healthy' if healthy else 'unhealthy'}: {why}", flush=True)
        return ExitCode.OK if healthy else ExitCode.FATAL
    debug = _debug(args.debug, env, parser)
    configure_logging(debug=debug, json=_json_logs(env, None))
    log = get_logger(__name__)
    ids = Identity.current()
    try:
        if args.check:
            from kanidm_mail_sender.ops.oneshot import run_check

            # The exit code a normal start would give for the first failure.
            return _run(
                run_check(
                    args.client_config,
                    args.mail_sender_config,
                    environ=env,
                    ids=ids,
                    out=sys.stdout,
                    skip_root_check=args.skip_root_check,
                )
            )
        if args.render is None:
            for warning in check_not_root(ids, skip=args.skip_root_check):
                log.warning("preflight.root", detail=warning)
        configs, warnings = load_configs(
            args.client_config, args.mail_sender_config, environ=env, ids=ids
        )
        configure_logging(debug=debug, json=_json_logs(env, configs.mail.log_format))
        log = get_logger(__name__)
        for warning in warnings:
            log.warning("config.warning", detail=warning)
        if args.render is not None:
            from kanidm_mail_sender.ops.oneshot import render_preview

            sys.stdout.buffer.write(render_preview(configs, args.render, args.language))
            sys.stdout.flush()
            return ExitCode.OK
        if args.test_email is not None:
            return _test_mode(configs, args.test_email)
        # The daemon's own code loads only here: the operator commands and the probe never
        # load the relay, the templates or the engine.
        from kanidm_mail_sender.kanidm.readylist import self_check
        from kanidm_mail_sender.runtime.signals import HardExit
        from kanidm_mail_sender.runtime.wiring import run_main

        self_check()  # before any message is read: a broken re module would skip entries
        hard_exit = HardExit()
        try:
            _run(run_main(configs, environ=env, hard_exit=hard_exit))
        finally:
            hard_exit.disarm()
    except MailSenderError as exc:
        event, code = next((e, c) for kind, e, c in _EXITS if isinstance(exc, kind))
        log.error(event, error=str(exc))
        return code
    except KeyboardInterrupt:
        return ExitCode.OK
    return ExitCode.OK


# Which exit code each of our errors ends the process with, most specific first (one code per
# cause, from every path, as README's table says).
_EXITS: tuple[tuple[type[MailSenderError], str, ExitCode], ...] = (
    (PreflightError, "preflight.refused", ExitCode.ROOT),
    (ConfigError, "config.invalid", ExitCode.CONFIG),
    (JournalFailed, "daemon.failed", ExitCode.FATAL),  # as the hard stop after it gives
    (StateError, "state.unusable", ExitCode.STATE),
    (MailSenderError, "daemon.failed", ExitCode.FATAL),
)


def _test_mode(configs: Configs, address: str) -> int:
    from kanidm_mail_sender.ops.oneshot import send_test

    log = get_logger(__name__)
    try:
        reply = _run(send_test(configs, address))
    except RelayError as exc:
        log.error("test.failed", destination=address, error=str(exc))
        print(f"FAILED: the test message to {address} was not sent: {exc}", flush=True)
        return ExitCode.NOT_DONE
    log.info("test.sent", destination=address, reply=reply)
    print(f"OK: the relay accepted the test message to {address} ({reply})", flush=True)
    return ExitCode.OK
