"""``retry``: make a failed or waiting destination due again, or refuse with why."""

from __future__ import annotations

from uuid import UUID

from kanidm_mail_sender.config.loading import Configs
from kanidm_mail_sender.core.states import ACCEPTED
from kanidm_mail_sender.errors import AlreadyRunning, KanidmNotFound, RetryRefused
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.logs import printable
from kanidm_mail_sender.ops.context import Context, state_dir_of
from kanidm_mail_sender.ops.tables import (
    journal_states,
    kanidm_entry,
)
from kanidm_mail_sender.state.journal import Journal
from kanidm_mail_sender.state.lock import lock_holder
from kanidm_mail_sender.state.retries import RetryRequest, apply_retry, plan_retry, submit_retry
from kanidm_mail_sender.state.view import JournalView

__all__ = ["retry"]


async def retry(ctx: Context, request: RetryRequest) -> int:
    """Make a destination due again; exit 5 with the reason when that would be wrong."""
    configs = ctx.configs()
    state_dir = state_dir_of(configs, ctx.environ)
    view = JournalView(state_dir)
    try:
        states = journal_states(view.rows(message_id=str(request.message_id)))
    finally:
        view.close()
    try:
        due = plan_retry(states, request.destination, request.resend)
        if any(states[d].state == ACCEPTED for d in due):
            if ctx.offline:
                # The guard is Kanidm's word that the message is still ready: a resend of a
                # message marked sent would mail a link Kanidm may have replaced.
                raise RetryRefused(
                    "a resend of an accepted destination needs Kanidm to say the message is "
                    "still ready; run it without --offline"
                )
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
        entry = kanidm_entry(await kanidm.message(message_id))
    except KanidmNotFound:
        raise RetryRefused("Kanidm no longer holds this message; nothing can be resent") from None
    finally:
        await kanidm.aclose()
    if entry["sent_at"] is not None:
        raise RetryRefused(
            "Kanidm has it marked sent, so it is never listed again; have Kanidm send a new "
            "one (a new reset link)"
        )
