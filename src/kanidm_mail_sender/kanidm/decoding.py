"""Content-Encoding decoding with a bound on what comes out, a slice at a time.

httpx inflates a whole network chunk in one call, so 64 KB of a gzip bomb can become
gigabytes at once and block the event loop while it does. Here every call yields at most
``step`` bytes, and the total may not pass ``limit``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

__all__ = ["BodyTooLarge", "Decoder", "UnsupportedEncoding"]

_RATIO_FLOOR = 16 << 20  # below this much decoded, any ratio is fine


class BodyTooLarge(ValueError):
    """The decoded body would pass its limit."""


class UnsupportedEncoding(ValueError):
    """A Content-Encoding we did not ask for and cannot decode."""


class Decoder:
    """Decodes one body in ``identity``, ``gzip`` or ``deflate``."""

    def __init__(
        self, encoding: str, *, limit: int, step: int = 1 << 18, max_ratio: int = 200
    ) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported")
        # 32 + 15: a gzip or a zlib header, detected; deflate servers mostly send zlib.
        self._zlib = zlib.decompressobj(47) if codings else None
        self._limit = limit
        self._step = step
        self._max_ratio = max_ratio
        self.decoded = 0
        self.received = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the decoded bytes of ``data``, at most ``step`` at a time."""
        self.received += len(data)
        if self._zlib is None:
            yield self._count(data)
            return
        pending = data
        while pending:
            try:
                out = self._zlib.decompress(pending, self._step)
            except zlib.error as exc:
                raise ValueError(f"the body is not valid {exc}") from None
            pending = self._zlib.unconsumed_tail
            if out:
                yield self._count(out)
            if self._zlib.eof:
                return

    def flush(self) -> Iterator[bytes]:
        """What the decoder still holds at the end of the body."""
        if self._zlib is not None:
            while out := self._zlib.decompress(b"", self._step):
                yield self._count(out)

    def _count(self, out: bytes) -> bytes:
        self.decoded += len(out)
        if self.decoded > self._limit:
            raise BodyTooLarge(f"the body is larger than {self._limit} bytes once decoded")
        # JSON compresses ten- to twentyfold; a thousandfold is a bomb, not a queue.
        if self.decoded > _RATIO_FLOOR and self.decoded > self.received * self._max_ratio:
            raise BodyTooLarge(
                f"the body inflates more than {self._max_ratio}-fold: a compression bomb"
            )
        return out
