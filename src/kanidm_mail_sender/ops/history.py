"""``history``: one row per message and destination, from the journal."""

from __future__ import annotations

from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.ops.context import Context, state_dir_of
from kanidm_mail_sender.ops.tables import (
    format_table,
    row_json,
    short,
    when,
)
from kanidm_mail_sender.state.view import JournalView

__all__ = ["history"]


def history(ctx: Context, *, state: str | None, since: float | None, to: str | None) -> int:
    """One row per (message, destination), newest first."""
    configs = ctx.configs()
    view = JournalView(state_dir_of(configs, ctx.environ))
    try:
        rows = view.rows(
            state=state,
            since=None if since is None else ctx.clock() - since,
            destination=to,
        )
    finally:
        view.close()
    table = format_table(
        ["updated", "message", "destination", "state", "attempts", "next attempt", "last reply"],
        [
            [
                when(r.updated),
                r.message_id,
                r.destination,
                r.state,
                str(r.attempts),
                when(r.next_attempt) if r.state == "deferred" else "-",
                short(r.reply),
            ]
            for r in rows
        ],
    )
    ctx.print([row_json(r) for r in rows], table)
    return ExitCode.OK
