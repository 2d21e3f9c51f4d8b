"""Splits Kanidm's ready list (a ``ScimListResponse``) into its resources as bytes arrive.

The scanner only tracks strings, escapes and nesting, with one regular-expression search per
structural character, so its cost is linear in the size of the body whatever the chunking.
Each element of ``resources`` is decoded alone, and only once it is complete and known to be
small and shallow enough: an entry that is too deep, too large, not UTF-8 or not JSON is
reported as :class:`MalformedMessage` and the scan goes on with the next one. Stray bytes
between entries and a byte-order mark are skipped.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from kanidm_mail_sender.core.messages import MalformedMessage
from kanidm_mail_sender.errors import PlatformUnsupported

__all__ = ["MAX_DEPTH", "MAX_ENTRY_BYTES", "ReadyListParser", "self_check"]

MAX_ENTRY_BYTES = 1 << 20  # a real entry is about 1 KB
MAX_DEPTH = 32  # a real entry nests 4 deep
_MAX_KEY = 256
_MAX_INT_DIGITS = 30
_ID_PREFIX = 4096  # of a bad entry, kept to find its id for the log

_OUTSIDE = re.compile(rb'["{}\[\]]')
_INSIDE = re.compile(rb'["\\]')
# Runs of bytes that are neither a bracket nor a quote, and complete strings; it stops before
# an unfinished string (left to _INSIDE). No possessive quantifier or atomic group: CPython
# 3.11.0-3.11.4 (Debian 12's 3.11.2) let a possessive one swallow an unfinished string
# (gh-106052). The match can always end where it stands, so it never backtracks into an
# earlier run: linear. The engine keeps a little state per run, so one call covers at most
# _SKIP_SPAN bytes; a string cut there is finished by the quote-by-quote loop.
_SKIP = re.compile(rb'(?:[^"{}\[\]]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.DOTALL)
_SKIP_SPAN = 1 << 16
_SCALAR_END = re.compile(rb"[,}\]\s]")
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_ITEM_EDGE = re.compile(rb'[,{\[\]"]')
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,64})"')
_BOM = b"\xef\xbb\xbf"


def _id_in(entry: bytes) -> str | None:
    """The id of a bad entry, for its log line, if its first bytes name one."""
    found = _ID.search(entry, 0, _ID_PREFIX)
    return found.group(1).decode("utf-8", "replace") if found else None


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


class _Value:
    """Scanning state of one JSON value whose start is known."""

    __slots__ = ("depth", "escape", "in_string", "kind", "too_deep")

    def __init__(self, kind: int) -> None:
        self.kind = kind  # first byte: { [ " or a scalar's
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.too_deep = False


class ReadyListParser:
    """Feed it chunks; it yields each resource (a dict) or a MalformedMessage for a bad one."""

    def __init__(self, *, max_entry: int = MAX_ENTRY_BYTES, max_depth: int = MAX_DEPTH) -> None:
        self._max_entry = max_entry
        self._max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0
        self._state = "start"  # start, key, colon, value, items, done
        self._key = b""
        self._value: _Value | None = None
        self._start = 0  # where the value being scanned began, in _buf
        self._keep = True  # whether the value's bytes are wanted (an element, or a key)
        self._dropped = 0  # bytes of an oversized value already discarded
        self._prefix = b""
        self.stray_bytes = 0

    def feed(self, chunk: bytes, *, final: bool = False) -> Iterator[Any]:
        """Add ``chunk`` and yield what it completes; ``final`` marks the end of the body."""
        self._buf += chunk
        yield from self._advance(final)
        self._compact()
        if final and self._state != "done":
            raise ValueError("the list of ready messages ended early")

    def _compact(self) -> None:
        """Drop consumed bytes; of an oversized value keep nothing but a prefix."""
        if self._value is None:
            cut = self._pos
        elif self._keep:
            cut = self._start
        else:
            cut = self._pos
            self._dropped += self._pos - self._start
        if cut:
            del self._buf[:cut]
            self._pos -= cut
            self._start = max(0, self._start - cut)

    def _skip_space(self) -> int | None:
        match = _NOT_SPACE.search(self._buf, self._pos)
        if match is None:
            self._pos = len(self._buf)
            return None
        self._pos = match.start()
        return self._buf[self._pos]

    def _advance(self, final: bool) -> Iterator[Any]:  # noqa: C901 - one small state machine
        while self._state != "done":
            if self._value is not None:
                if not self._scan(final):
                    return
                yield from self._finish()
                continue
            char = self._skip_space()
            if char is None:
                return
            state = self._state
            if state == "start":
                if self._buf.startswith(_BOM, self._pos):
                    self._pos += len(_BOM)
                    continue
                self._expect(char, b"{")
                self._state = "key"
            elif state == "key":
                if char in b",":
                    self._pos += 1
                elif char in b"}":
                    self._pos += 1
                    self._state = "done"
                else:
                    self._expect_no_advance(char, b'"')
                    self._begin(char, keep=True)
            elif state == "colon":
                self._expect(char, b":")
                self._state = "value"
            elif state == "value":
                if self._key == b'"resources"':
                    self._expect(char, b"[")
                    self._state = "items"
                else:
                    self._begin(char, keep=False)
            elif state == "items":
                if char in b",":
                    self._pos += 1
                elif char in b"]":
                    self._pos += 1
                    self._state = "key"
                elif char in b'{["':  # an entry, or at least a value to skip whole
                    self._begin(char, keep=True)
                else:  # not an entry: skipped to the next one, the list goes on
                    found = _ITEM_EDGE.search(self._buf, self._pos)
                    end = len(self._buf) if found is None else found.start()
                    self.stray_bytes += end - self._pos
                    self._pos = end

    def _begin(self, char: int, *, keep: bool) -> None:
        self._value = _Value(char)
        self._start = self._pos
        self._keep = keep
        self._dropped = 0
        self._prefix = b""
        if char in b'"':
            self._value.in_string = True
            self._pos += 1
        elif char in b"{[":
            self._value.depth = 1
            self._pos += 1

    def _scan(self, final: bool) -> bool:  # noqa: C901 - the scanner's inner loop
        """Scan the current value; True when it is complete (``_pos`` just past its end)."""
        value, buf = self._value, self._buf
        assert value is not None
        pos = self._pos
        complete = False
        if value.kind not in b'{["':
            match = _SCALAR_END.search(buf, pos)
            if match is None:
                self._pos = len(buf)
                return final
            self._pos = match.start()
            return True
        while True:
            if value.in_string:
                if value.escape:
                    if pos >= len(buf):
                        break
                    pos += 1
                    value.escape = False
                match = _INSIDE.search(buf, pos)
                if match is None:
                    pos = len(buf)
                    break
                pos = match.start() + 1
                if buf[pos - 1] == 0x5C:  # a backslash: the next byte is escaped
                    value.escape = True
                    continue
                value.in_string = False
                if value.depth == 0:  # the value was a string: done
                    complete = True
                    break
                continue
            # Everything up to the next bracket, whole strings included, in one C call: the
            # loop below then turns once per bracket, not once per quote.
            skipped = _SKIP.match(buf, pos, pos + _SKIP_SPAN)  # matches, if only ""
            if skipped is not None:
                pos = skipped.end()
            match = _OUTSIDE.search(buf, pos)
            if match is None:
                pos = len(buf)
                break
            pos = match.start() + 1
            char = buf[pos - 1]
            if char == 0x22:
                value.in_string = True
            elif char in (0x7B, 0x5B):
                value.depth += 1
                if value.depth > self._max_depth:
                    value.too_deep = True
            else:
                value.depth -= 1
                if value.depth == 0:
                    complete = True
                    break
        self._pos = pos
        if self._keep and not complete and self._size() > self._max_entry:
            self._prefix = bytes(buf[self._start : self._start + _ID_PREFIX])
            self._keep = False  # too big: scan on to its end, keep nothing more
        return complete

    def _size(self) -> int:
        return self._dropped + self._pos - self._start

    def _finish(self) -> Iterator[Any]:
        value = self._value
        assert value is not None
        raw = bytes(self._buf[self._start : self._pos]) if self._keep else b""
        self._value = None
        if self._state == "key":
            if len(raw) > _MAX_KEY:
                raise ValueError("a key of the list of ready messages is too long")
            self._key = raw
            self._state = "colon"
            return
        if self._state == "value":
            self._state = "key"  # a value we skip (schemas, totalResults, ...)
            return
        # an element of resources
        if not self._keep or self._size() > self._max_entry:
            # Of an entry too big to keep, only its prefix was kept.
            found = _id_in(raw or self._prefix)
            yield MalformedMessage(found, f"entry larger than {self._max_entry} bytes")
        elif value.too_deep:
            yield MalformedMessage(_id_in(raw), f"entry nested deeper than {self._max_depth}")
        else:
            yield self._decode(raw)

    @staticmethod
    def _decode(raw: bytes) -> Any:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return MalformedMessage(_id_in(raw), "entry is not valid UTF-8")
        try:
            return json.loads(text, parse_int=_bounded_int)
        except (ValueError, RecursionError) as exc:
            return MalformedMessage(_id_in(raw), f"entry is not valid JSON ({str(exc)[:80]})")

    def _expect(self, char: int, allowed: bytes) -> None:
        self._expect_no_advance(char, allowed)
        self._pos += 1

    @staticmethod
    def _expect_no_advance(char: int, allowed: bytes) -> None:
        if char not in allowed:
            raise ValueError(f"unexpected {bytes([char])!r} in the list of ready messages")


_CHECK_BODY = (
    b'{"resources":[{"id":"a","s":"x\\"y{[","n":[1,{"k":"]"}]},'
    b'{"id":"b","t":"\\\\","u":"\\u00e9"}],"totalResults":2}'
)


def self_check(body: bytes = _CHECK_BODY) -> None:
    """Scan a list cut at every byte and compare with ``json``; raises PlatformUnsupported
    naming this Python when its regular-expression engine misreads it."""
    expected = json.loads(body)["resources"]
    for cut in range(len(body) + 1):
        parser = ReadyListParser()
        try:
            found = [*parser.feed(body[:cut]), *parser.feed(body[cut:], final=True)]
        except ValueError:
            found = None
        if found != expected:
            raise PlatformUnsupported(
                f"the ready-list scanner misreads a list cut at byte {cut} on Python "
                f"{'.'.join(map(str, sys.version_info[:3]))}; this Python's re module is broken "
                "(CPython 3.11.0-3.11.4 had gh-106052): use 3.11.5 or newer"
            )
