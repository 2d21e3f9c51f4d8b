"""What operators run beside the daemon: the commands (status, queue, history, show, retry,
in ``ops.commands``) and the container's health probe.

The face holds only what is light: ``--probe`` runs every 30 s in a container and must not
load httpx or h11. ``ops.commands`` (Kanidm's client) and ``ops.oneshot`` (``-t``,
``--render``, ``--check``: the relay and the templates) are imported when asked for.
"""

from kanidm_mail_sender.ops.durations import parse_since
from kanidm_mail_sender.ops.probe import probe

__all__ = ["parse_since", "probe"]
