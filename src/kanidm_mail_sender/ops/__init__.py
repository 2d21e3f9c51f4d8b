"""What operators run beside the daemon: the commands (status, queue, history, show, retry)
and the container's health probe. The one-shot modes (``-t``, ``--render``, ``--check``) are
in ``ops.oneshot``, imported only when asked for: they load the relay and the templates."""

from kanidm_mail_sender.ops.commands import Context, dispatch, parse_since
from kanidm_mail_sender.ops.probe import probe

__all__ = ["Context", "dispatch", "parse_since", "probe"]
