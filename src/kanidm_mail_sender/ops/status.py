"""``status``: the daemon, its last poll, the relay, the journal."""

from __future__ import annotations

from typing import Any

from kanidm_mail_sender import __version__
from kanidm_mail_sender.core.messages import MalformedMessage
from kanidm_mail_sender.errors import StateError
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.ops.context import Context, state_dir_of
from kanidm_mail_sender.ops.tables import (
    age,
    format_table,
    kanidm_entry,
    when,
)
from kanidm_mail_sender.state.journal import RETENTION_SECONDS
from kanidm_mail_sender.state.lock import lock_holder
from kanidm_mail_sender.state.status import read_status
from kanidm_mail_sender.state.view import JournalView

__all__ = ["status"]


def _role(standby: Any) -> str:
    if not isinstance(standby, dict):
        return "-"
    delay = standby.get("delay_seconds") or 0
    if not delay:
        return "active"
    return (
        f"STANDBY: sends only what has been ready for {delay:g} s or more; "
        f"{standby.get('held_for_primary', 0)} left to the primary at the last poll"
    )


async def status(ctx: Context) -> int:
    """Daemon, last poll, relay, journal counts and the oldest ready message.

    Exit 0 when a daemon runs and its last poll worked, 1 otherwise.
    """
    configs = ctx.configs()
    state_dir = state_dir_of(configs, ctx.environ)
    now = ctx.clock()
    pid = lock_holder(state_dir)
    published = read_status(state_dir) or {}
    counts: dict[str, int] = {}
    try:
        view = JournalView(state_dir)
    except StateError:  # no journal yet: reported as empty
        view = None
    if view is not None:
        counts = view.counts(now - RETENTION_SECONDS)
        view.close()
    oldest: dict[str, Any] | None = None
    ready = None
    if not ctx.offline:
        kanidm = make_kanidm(configs)
        try:
            ready = 0
            async for item in kanidm.ready():
                if isinstance(item, MalformedMessage):
                    continue
                ready += 1
                entry = kanidm_entry(item)
                if oldest is None or (entry["send_after"] or now) < (oldest["send_after"] or now):
                    oldest = entry
        finally:
            await kanidm.aclose()
    last_poll = published.get("last_poll") if pid else None
    standby = published.get("standby") if pid else None
    relay = published.get("relay") or {}
    data = {
        "daemon": {"running": pid is not None, "pid": pid, "version": published.get("version")},
        "cli_version": __version__,
        "state_dir": str(state_dir),
        "last_poll": last_poll,
        "relay": relay if pid else None,
        "standby": standby,
        "journal_counts": counts,
        "ready_now": ready,
        "oldest_ready": None
        if oldest is None
        else {**oldest, "age_seconds": now - (oldest["send_after"] or now)},
    }
    poll_text = "-"
    if last_poll:
        error = last_poll.get("error")
        poll_text = f"{when(last_poll.get('at'))}, " + (f"FAILED: {error}" if error else "ok")
    if not pid:
        relay_text = "-"
    elif relay.get("paused"):
        cause = f" [{relay['cause']}]" if relay.get("cause") else ""
        relay_text = (
            f"PAUSED{cause} until {when(relay.get('paused_until'))}: {relay.get('last_error')}"
        )
    else:
        relay_text = f"ok (concurrency {relay.get('concurrency')})"
    if ctx.offline:
        oldest_text = "not asked (--offline)"
    elif oldest is None:
        oldest_text = "none: the queue is empty"
    else:
        oldest_text = (
            f"{oldest['id']} ({oldest['template']}, to {', '.join(oldest['destinations'])}), "
            f"ready for {age(now - (oldest['send_after'] or now))}; {ready} ready"
        )
    table = format_table(
        ["what", "state"],
        [
            [
                "daemon",
                f"running, pid {pid}, version {published.get('version') or '?'}"
                if pid
                else "NOT RUNNING",
            ],
            ["role", _role(standby)],
            ["last poll", poll_text],
            ["relay", relay_text],
            [
                "journal (8 days)",
                ", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "empty",
            ],
            ["oldest ready", oldest_text],
        ],
    )
    ctx.print(data, table)
    healthy = pid is not None and bool(last_poll) and not (last_poll or {}).get("error")
    return ExitCode.OK if healthy else ExitCode.FATAL
