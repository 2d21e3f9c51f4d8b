"""What every operator command shares: where to look, and how to print."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kanidm_mail_sender.config.loading import Configs, load_configs
from kanidm_mail_sender.config.preflight import Identity
from kanidm_mail_sender.config.statedir import resolve_state_dir, state_dir_named
from kanidm_mail_sender.logs import printable
from kanidm_mail_sender.state.place import find_state_dir

__all__ = ["Context", "state_dir_of"]


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
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def configs(self) -> Configs:
        """Both configs; their warnings (a world-readable secret, a typo) go to ``err`` as
        the daemon would log them, never into the table or the JSON."""
        configs, warnings = load_configs(
            self.client_config, self.mail_config, environ=self.environ, ids=Identity.current()
        )
        for warning in warnings:
            print(f"warning: {printable(warning)}", file=self.err, flush=True)
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


def state_dir_of(configs: Configs, environ: Mapping[str, str]) -> Path:
    """Where the daemon keeps its journal, its fallback included (as the daemon chose it)."""
    config = configs.mail
    named = state_dir_named(config, environ)
    return find_state_dir(resolve_state_dir(config, environ), named=named)
