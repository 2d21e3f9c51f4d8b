"""``queue``: what Kanidm holds now, with each destination's state."""

from __future__ import annotations

from kanidm_mail_sender.core.messages import MalformedMessage
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.ops.context import Context, state_dir_of
from kanidm_mail_sender.ops.tables import (
    age,
    format_table,
    journal_states,
    kanidm_entry,
    when,
)
from kanidm_mail_sender.state.view import JournalView

__all__ = ["queue"]


async def queue(ctx: Context) -> int:
    """Every message Kanidm holds, joined with the journal's state per destination."""
    configs = ctx.configs()
    view = JournalView(state_dir_of(configs, ctx.environ))
    kanidm = make_kanidm(configs)
    now = ctx.clock()
    entries = []
    try:
        async for item in kanidm.every_message():
            if isinstance(item, MalformedMessage):
                continue
            entry = kanidm_entry(item)
            journal = journal_states(view.rows(message_id=entry["id"]))
            entry["delivery"] = {
                d: (journal[d].state if d in journal else "not tried")
                for d in entry["destinations"]
            }
            entries.append(entry)
    finally:
        await kanidm.aclose()
        view.close()
    entries.sort(key=lambda e: e["send_after"] or 0)
    rows = [
        [
            e["id"],
            e["template"],
            ", ".join(f"{d} ({state})" for d, state in e["delivery"].items()),
            when(e["send_after"]),
            when(e["sent_at"]) if e["sent_at"] else "queued",
            age(now - (e["send_after"] or now)),
        ]
        for e in entries
    ]
    ctx.print(
        entries,
        format_table(["id", "template", "destinations", "send_after", "sent_at", "age"], rows),
    )
    return ExitCode.OK
