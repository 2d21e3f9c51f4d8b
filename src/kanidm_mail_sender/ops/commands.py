"""The operator's subcommands: ``status``, ``queue``, ``history``, ``show`` and ``retry``.

Each reads the journal read-only (safe beside the running daemon) and, unless ``--offline``,
asks Kanidm with the daemon's token; each prints a table, or JSON with ``--json``. They never
print a reset link's secret (the intent id).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from kanidm_mail_sender import __version__
from kanidm_mail_sender.config.loading import Configs, load_configs
from kanidm_mail_sender.config.preflight import Identity
from kanidm_mail_sender.config.statedir import resolve_state_dir, state_dir_named
from kanidm_mail_sender.core.messages import CredentialResetV1, MalformedMessage, parse_resource
from kanidm_mail_sender.core.queueid import relay_queue_id
from kanidm_mail_sender.core.states import ACCEPTED, DestinationState
from kanidm_mail_sender.errors import AlreadyRunning, KanidmNotFound, RetryRefused, StateError
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.logs import printable
from kanidm_mail_sender.state.journal import RETENTION_SECONDS, Journal
from kanidm_mail_sender.state.lock import lock_holder
from kanidm_mail_sender.state.place import find_state_dir
from kanidm_mail_sender.state.retries import RetryRequest, apply_retry, plan_retry, submit_retry
from kanidm_mail_sender.state.status import read_status
from kanidm_mail_sender.state.view import HistoryRow, JournalView

__all__ = ["Context", "history", "queue", "retry", "run_command", "show", "status"]


@dataclass(frozen=True)
class Context:
    """Where to look and how to print."""

    client_config: Path
    mail_config: Path
    environ: Mapping[str, str]
    out: TextIO
    as_json: bool = False
    offline: bool = False
    clock: Callable[[], float] = time.time

    def configs(self) -> Configs:
        """Both configs (their warnings are the daemon's business, not shown here)."""
        configs, _ = load_configs(
            self.client_config, self.mail_config, environ=self.environ, ids=Identity.current()
        )
        return configs

    def print(self, data: Any, table: str) -> None:
        """JSON with ``--json``, else the table."""
        # JSON escapes every control character itself (ensure_ascii); a table is made safe
        # for the terminal here, whatever its cells hold (display names are the users' own).
        text = (
            json.dumps(data, indent=2, default=str)
            if self.as_json
            else printable(table, newlines=True)
        )
        print(text, file=self.out, flush=True)


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


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float) -> str:
    whole = max(0, int(seconds))
    for size, unit, smaller, rest in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // smaller}{rest}"
    return f"{whole}s"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(headers), *[[printable(str(cell)) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _short(text: str | None, size: int = 60) -> str:
    if not text:
        return "-"
    return text if len(text) <= size else text[: size - 1] + "…"


def _states(rows: Iterable[HistoryRow]) -> dict[str, DestinationState]:
    return {
        row.destination: DestinationState(row.state, row.attempts, row.next_attempt, row.reply)
        for row in rows
    }


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _entry(resource: Any) -> dict[str, Any]:
    """What an operator may see of one Kanidm message: never the reset's intent id."""
    parsed = parse_resource(resource)
    template = parsed.template
    entry: dict[str, Any] = {
        "id": str(parsed.id),
        "template": template.kind,
        "display_name": template.display_name,
        "destinations": list(parsed.destinations),
        "send_after": _timestamp(resource.get("send_after")),
        "sent_at": _timestamp(resource.get("sent_at")),
        "delete_after": _timestamp(resource.get("delete_after")),
    }
    if isinstance(template, CredentialResetV1):
        entry["expires"] = template.expiry_time.timestamp()
    return entry


def _state_dir(configs: Configs, environ: Mapping[str, str]) -> Path:
    """Where the daemon keeps its journal, its fallback included (as the daemon chose it)."""
    config = configs.mail
    named = state_dir_named(config, environ)
    return find_state_dir(resolve_state_dir(config, environ), named=named)


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
    state_dir = _state_dir(configs, ctx.environ)
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
                entry = _entry(item)
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
        poll_text = f"{_when(last_poll.get('at'))}, " + (f"FAILED: {error}" if error else "ok")
    if not pid:
        relay_text = "-"
    elif relay.get("paused"):
        cause = f" [{relay['cause']}]" if relay.get("cause") else ""
        relay_text = (
            f"PAUSED{cause} until {_when(relay.get('paused_until'))}: {relay.get('last_error')}"
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
            f"ready for {_age(now - (oldest['send_after'] or now))}; {ready} ready"
        )
    table = _table(
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


async def queue(ctx: Context) -> int:
    """Every message Kanidm holds, joined with the journal's state per destination."""
    configs = ctx.configs()
    view = JournalView(_state_dir(configs, ctx.environ))
    kanidm = make_kanidm(configs)
    now = ctx.clock()
    entries = []
    try:
        async for item in kanidm.every_message():
            if isinstance(item, MalformedMessage):
                continue
            entry = _entry(item)
            journal = _states(view.rows(message_id=entry["id"]))
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
            _when(e["send_after"]),
            _when(e["sent_at"]) if e["sent_at"] else "queued",
            _age(now - (e["send_after"] or now)),
        ]
        for e in entries
    ]
    ctx.print(
        entries,
        _table(["id", "template", "destinations", "send_after", "sent_at", "age"], rows),
    )
    return ExitCode.OK


def _row_json(row: HistoryRow) -> dict[str, Any]:
    return {**asdict(row), "relay_queue_id": _queue_id(row)}


def _queue_id(row: HistoryRow) -> str | None:
    return relay_queue_id(row.reply) if row.state == ACCEPTED and row.reply else None


def history(ctx: Context, *, state: str | None, since: float | None, to: str | None) -> int:
    """One row per (message, destination), newest first."""
    configs = ctx.configs()
    view = JournalView(_state_dir(configs, ctx.environ))
    try:
        rows = view.rows(
            state=state,
            since=None if since is None else ctx.clock() - since,
            destination=to,
        )
    finally:
        view.close()
    table = _table(
        ["updated", "message", "destination", "state", "attempts", "next attempt", "last reply"],
        [
            [
                _when(r.updated),
                r.message_id,
                r.destination,
                r.state,
                str(r.attempts),
                _when(r.next_attempt) if r.state == "deferred" else "-",
                _short(r.reply),
            ]
            for r in rows
        ],
    )
    ctx.print([_row_json(r) for r in rows], table)
    return ExitCode.OK


async def show(ctx: Context, message_id: UUID) -> int:
    """Kanidm's entry and every destination's history; exit 5 when neither knows it."""
    configs = ctx.configs()
    view = JournalView(_state_dir(configs, ctx.environ))
    try:
        rows = view.rows(message_id=str(message_id))
    finally:
        view.close()
    entry: dict[str, Any] | None = None
    kanidm_note = "not asked (--offline)"
    if not ctx.offline:
        kanidm = make_kanidm(configs)
        try:
            entry = _entry(await kanidm.message(message_id))
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
            f"queued    {_when(entry['send_after'])}",
            f"sent_at   {_when(entry['sent_at'])}",
        ]
        if "expires" in entry:
            lines.append(f"link expires {_when(entry['expires'])}")
    lines.append("")
    lines.append(
        _table(
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
                    _when(r.first_seen),
                    _when(r.updated),
                    _queue_id(r) or "-",
                    _short(r.reply, 80),
                ]
                for r in rows
            ]
            or [["(never tried)", "-", "-", "-", "-", "-", "-"]],
        )
    )
    ctx.print({"kanidm": entry, "destinations": [_row_json(r) for r in rows]}, "\n".join(lines))
    return ExitCode.OK


async def retry(ctx: Context, request: RetryRequest) -> int:
    """Make a destination due again; exit 5 with the reason when that would be wrong."""
    configs = ctx.configs()
    state_dir = _state_dir(configs, ctx.environ)
    view = JournalView(state_dir)
    try:
        states = _states(view.rows(message_id=str(request.message_id)))
    finally:
        view.close()
    try:
        due = plan_retry(states, request.destination, request.resend)
        if any(states[d].state == ACCEPTED for d in due) and not ctx.offline:
            await _still_queued(configs, request.message_id)
    except RetryRefused as exc:
        print(f"refused: {request.message_id}: {printable(str(exc))}", file=ctx.out, flush=True)
        return ExitCode.NOT_DONE
    holder = lock_holder(state_dir)
    if holder is None:
        try:
            journal = Journal(state_dir)
        except AlreadyRunning:
            holder = -1  # a daemon started just now: leave it the request
        else:
            try:
                await apply_retry(journal, request, ctx.clock())
            finally:
                journal.close()
            ctx.print(
                {"applied": True, "destinations": due},
                f"{', '.join(due)}: due now; sent at the first poll once the daemon runs",
            )
            return ExitCode.OK
    left = submit_retry(state_dir, request)
    who = f"pid {holder}" if holder > 0 else "just started"
    owner = left.stat().st_uid  # the state directory's: the daemon can read it
    ctx.print(
        {
            "applied": False,
            "queued_for_daemon": holder,
            "request_owner": owner,
            "destinations": due,
        },
        f"{', '.join(due)}: handed to the running daemon ({who}; the request belongs to uid "
        f"{owner}, as its state directory does); sent at its next poll",
    )
    return ExitCode.OK


async def _still_queued(configs: Configs, message_id: UUID) -> None:
    """A resend only works while Kanidm still lists the message as ready."""
    kanidm = make_kanidm(configs)
    try:
        entry = _entry(await kanidm.message(message_id))
    except KanidmNotFound:
        raise RetryRefused("Kanidm no longer holds this message; nothing can be resent") from None
    finally:
        await kanidm.aclose()
    if entry["sent_at"] is not None:
        raise RetryRefused(
            "Kanidm has it marked sent, so it is never listed again; have Kanidm send a new "
            "one (a new reset link)"
        )
