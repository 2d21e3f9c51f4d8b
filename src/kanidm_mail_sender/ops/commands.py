"""The operator's subcommands: ``status``, ``queue``, ``history``, ``show`` and ``retry``,
one module each (``ops.status`` ...), with ``ops.context`` and ``ops.tables`` beside them.

Each reads the journal read-only (safe beside the running daemon) and, unless ``--offline``,
asks Kanidm with the daemon's token; each prints a table, or JSON with ``--json``. They never
print a reset link's secret (the intent id).
"""

from __future__ import annotations

import argparse

from kanidm_mail_sender.ops.context import Context
from kanidm_mail_sender.ops.history import history
from kanidm_mail_sender.ops.queue import queue
from kanidm_mail_sender.ops.retry import retry
from kanidm_mail_sender.ops.show import show
from kanidm_mail_sender.ops.status import status
from kanidm_mail_sender.state.retries import RetryRequest

__all__ = ["run_command"]


async def run_command(args: argparse.Namespace, ctx: Context) -> int:
    """Run the command ``args`` names (as the CLI parsed them); returns the exit code."""
    if args.command == "status":
        return await status(ctx)
    if args.command == "queue":
        return await queue(ctx)
    if args.command == "history":
        return history(ctx, state=args.state, since=args.since, to=args.to)
    if args.command == "show":
        return await show(ctx, args.message_id)
    return await retry(ctx, RetryRequest(args.message_id, args.destination, args.resend))
