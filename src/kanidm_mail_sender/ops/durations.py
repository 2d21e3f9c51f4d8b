"""Durations as operators write them on the command line (``--since 2h``)."""

from __future__ import annotations

import re

__all__ = ["parse_since"]

_SINCE = re.compile(r"(\d+)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``7d`` (or a sum such as ``1h30m``) as seconds."""
    cleaned = text.replace(" ", "").lower()
    parts = _SINCE.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(f"{text!r}: write a duration such as 90s, 30m, 2h or 7d")
    return float(sum(int(n) * _UNIT[u] for n, u in parts))
