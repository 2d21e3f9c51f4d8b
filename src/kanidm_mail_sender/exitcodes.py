"""The process's exit codes, one per cause, as README.md's table gives them. The CLI returns
them; the operator commands return their result in the same terms."""

from __future__ import annotations

import enum

__all__ = ["ExitCode"]


class ExitCode(enum.IntEnum):
    """What the process's exit status says."""

    OK = 0  # stopped by a signal, test mail accepted, --check passed, a command done
    FATAL = 1  # fatal at run time (token refused, journal unwritable); a command's Kanidm failed
    USAGE = 2  # unknown flag, bad KANIDM_DEBUG value
    CONFIG = 3  # a config file missing or invalid, a broken template, an unbindable port
    ROOT = 4  # refused to run as root without -s
    NOT_DONE = 5  # the test mail refused, --check found a problem, a request not possible
    STATE = 6  # the state directory locked by another instance, not writable or unreadable
