"""What lasts on disk in the state directory: the delivery journal (writer and read-only
view), the lock's holder, ``status.json`` and the operator's retry requests."""

from kanidm_mail_sender.state.journal import RETENTION_SECONDS, STATES_BATCH, Journal
from kanidm_mail_sender.state.lock import lock_holder
from kanidm_mail_sender.state.place import StatePlace, find_state_dir, settle_state_dir
from kanidm_mail_sender.state.retries import (
    RetryRequest,
    apply_retries,
    apply_retry,
    plan_retry,
    submit_retry,
)
from kanidm_mail_sender.state.status import STATUS_FILE, publish, read_status
from kanidm_mail_sender.state.view import HistoryRow, JournalView

__all__ = [
    "RETENTION_SECONDS",
    "STATES_BATCH",
    "STATUS_FILE",
    "HistoryRow",
    "Journal",
    "JournalView",
    "RetryRequest",
    "StatePlace",
    "apply_retries",
    "apply_retry",
    "find_state_dir",
    "lock_holder",
    "plan_retry",
    "publish",
    "read_status",
    "settle_state_dir",
    "submit_retry",
]
