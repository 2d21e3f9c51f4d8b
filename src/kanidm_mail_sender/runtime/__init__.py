"""The daemon process: wiring from the configs, the poll loop, signals, sd_notify, limits
and the metrics listener."""

from kanidm_mail_sender.runtime.wiring import run_main

__all__ = ["run_main"]
