"""``show``: everything about one message."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from kanidm_mail_sender.errors import KanidmNotFound
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.logs import printable
from kanidm_mail_sender.ops.context import Context, state_dir_of
from kanidm_mail_sender.ops.tables import (
    format_table,
    kanidm_entry,
    queue_id,
    row_json,
    short,
    when,
)
from kanidm_mail_sender.state.view import JournalView

__all__ = ["show"]


async def show(ctx: Context, message_id: UUID) -> int:
    """Kanidm's entry and every destination's history; exit 5 when neither knows it."""
    configs = ctx.configs()
    view = JournalView(state_dir_of(configs, ctx.environ))
    try:
        rows = view.rows(message_id=str(message_id))
    finally:
        view.close()
    entry: dict[str, Any] | None = None
    kanidm_note = "not asked (--offline)"
    if not ctx.offline:
        kanidm = make_kanidm(configs)
        try:
            entry = kanidm_entry(await kanidm.message(message_id))
            kanidm_note = "queued" if entry["sent_at"] is None else "marked sent"
        except KanidmNotFound:
            kanidm_note = "Kanidm no longer holds it (purged after 7 days, or deleted)"
        finally:
            await kanidm.aclose()
    if entry is None and not rows:
        print(f"{message_id}: neither Kanidm nor the journal knows this message", file=ctx.out)
        return ExitCode.NOT_DONE
    lines = [f"message   {message_id}", f"kanidm    {kanidm_note}"]
    if entry is not None:
        lines += [
            f"template  {entry['template']} ({printable(str(entry['display_name']))})",
            f"queued    {when(entry['send_after'])}",
            f"sent_at   {when(entry['sent_at'])}",
        ]
        if "expires" in entry:
            lines.append(f"link expires {when(entry['expires'])}")
    lines.append("")
    lines.append(
        format_table(
            [
                "destination",
                "state",
                "attempts",
                "first seen",
                "updated",
                "relay queue id",
                "reply",
            ],
            [
                [
                    r.destination,
                    r.state,
                    str(r.attempts),
                    when(r.first_seen),
                    when(r.updated),
                    queue_id(r) or "-",
                    short(r.reply, 80),
                ]
                for r in rows
            ]
            or [["(never tried)", "-", "-", "-", "-", "-", "-"]],
        )
    )
    ctx.print({"kanidm": entry, "destinations": [row_json(r) for r in rows]}, "\n".join(lines))
    return ExitCode.OK
