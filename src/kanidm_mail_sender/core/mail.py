"""Turns rendered text into an RFC 5322 message with the stdlib ``email`` package."""

from __future__ import annotations

import email.contentmanager
import email.policy
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from uuid import UUID

from kanidm_mail_sender.core.addresses import domain_of
from kanidm_mail_sender.core.render import RenderedMail

__all__ = ["AUTOMATIC", "Envelope", "MailIdentity", "build_message", "stable_message_id"]

# RFC 3834: a machine wrote this mail, so vacation responders must not answer it; Exchange and
# Outlook ignore that header but honour their own (out-of-office and auto-replies only: a
# bounce of a reset still reaches the sender).
AUTOMATIC = (("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "OOF, AutoReply"))
_AUTOMATIC_BYTES = "".join(f"{name}: {value}\r\n" for name, value in AUTOMATIC).encode("ascii")

# SMTP line endings, 78-column folding, and never raw 8-bit bodies (as upstream's lettre).
_POLICY = email.policy.SMTP.clone(cte_type="7bit")


@dataclass(frozen=True, slots=True)
class MailIdentity:
    """Who the mail is from: the instance's display name and addresses."""

    display_name: str
    from_address: str
    reply_to_address: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """A serialised mail and its SMTP envelope."""

    sender: str
    recipient: str
    data: bytes
    message_id: str


def stable_message_id(message_id: UUID, destination: str, from_address: str) -> str:
    """The same Message-ID on every attempt for one (message, destination), so receivers can
    drop duplicates."""
    return f"<{_uuid5_text(message_id, destination.lower())}@{domain_of(from_address)}>"


def _uuid5_text(namespace: UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building two UUID objects (a tenth of
    the CPU of rendering a mail); the test checks it against the stdlib."""
    digest = bytearray(
        hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _mailbox(display_name: str, address: str) -> Address:
    local, _, domain = address.rpartition("@")
    return Address(display_name=display_name, username=local.strip('"'), domain=domain)


_SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9.-]{1,190}")


@lru_cache(maxsize=256)
def _header_bytes(name: str, value: str | tuple[str, str]) -> bytes:
    """One header exactly as the stdlib folds and encodes it; cached, as From, Reply-To and
    Subject repeat across thousands of mails."""
    msg = EmailMessage(policy=_POLICY)
    msg[name] = _mailbox(*value) if isinstance(value, tuple) else value
    return msg.as_bytes(policy=_POLICY).split(b"\r\n\r\n", 1)[0] + b"\r\n"


def _simple_body(text: str) -> tuple[bytes, bytes] | None:
    """The Content-Transfer-Encoding and body the stdlib would write for ``text``: 7bit for
    short ASCII lines, else quoted-printable or base64 as its heuristic picks (a translated
    mail is mostly ASCII: quoted-printable). None when this Python has no such helper."""
    if text.isascii():
        lines = text.splitlines()
        limit = _POLICY.max_line_length or 78
        if all(len(line) <= limit for line in lines):
            return b"7bit", ("\r\n".join(lines) + "\r\n").encode("ascii")
    encode = getattr(email.contentmanager, "_encode_text", None)  # the stdlib's own choice
    if encode is None:  # pragma: no cover - every Python from 3.6 to 3.14 has it
        return None
    cte, data = encode(text, "utf-8", None, _POLICY)
    lines = data.splitlines()
    return cte.encode("ascii"), ("\r\n".join(lines) + "\r\n").encode("ascii")


def _fast_path(
    rendered: RenderedMail, identity: MailIdentity, destination: str, date: str, header_id: str
) -> bytes | None:
    """The common case (plain text, simple address) built directly: the stdlib builder
    costs milliseconds per mail, which would cap throughput far below the relay's."""
    if rendered.html is not None or not _SIMPLE_ADDRESS.fullmatch(destination):
        return None
    encoded = _simple_body(rendered.text)
    if encoded is None:
        return None
    cte, body = encoded
    return b"".join(
        (
            _header_bytes("From", (identity.display_name, identity.from_address)),
            _header_bytes("Reply-To", (identity.display_name, identity.reply_to_address)),
            f"To: {destination}\r\n".encode("ascii"),
            _subject_bytes(rendered.subject),
            f"Date: {date}\r\nMessage-ID: {header_id}\r\n".encode("ascii"),
            _AUTOMATIC_BYTES,
            b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: ',
            cte,
            b"\r\nMIME-Version: 1.0\r\n",
            _language_bytes(rendered.language),
            body,
        )
    )


@lru_cache(maxsize=8)
def _date_header(seconds: int) -> str:
    """RFC 5322 date of a whole second; mails sent in the same second share the string."""
    return format_datetime(datetime.fromtimestamp(seconds, UTC))


def build_message(
    rendered: RenderedMail,
    *,
    identity: MailIdentity,
    destination: str,
    message_id: UUID,
    date: datetime,
) -> Envelope:
    """Build one mail to one destination; text/plain, or multipart/alternative with HTML."""
    header_id = stable_message_id(message_id, destination, identity.from_address)
    date_text = _date_header(int(date.timestamp()))
    data = _fast_path(rendered, identity, destination, date_text, header_id)
    if data is None:
        data = _stdlib_message(rendered, identity, destination, date_text, header_id)
    return Envelope(
        sender=identity.from_address, recipient=destination, data=data, message_id=header_id
    )


def _stdlib_message(
    rendered: RenderedMail, identity: MailIdentity, destination: str, date: str, header_id: str
) -> bytes:
    # A non-ASCII address travels with SMTPUTF8, so its headers are raw UTF-8 (RFC 6532);
    # encoded words are not allowed inside an address.
    eai = not (destination.isascii() and identity.from_address.isascii())
    policy = _POLICY.clone(utf8=True) if eai else _POLICY
    msg = EmailMessage(policy=policy)
    msg["From"] = _mailbox(identity.display_name, identity.from_address)
    msg["Reply-To"] = _mailbox(identity.display_name, identity.reply_to_address)
    msg["Date"] = date
    msg["Message-ID"] = header_id
    for name, value in AUTOMATIC:
        msg[name] = value
    msg.set_content(rendered.text, charset="utf-8")
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
        for part in msg.iter_parts():
            # The stdlib repeats MIME-Version on sub-parts; only the top level should carry it.
            del part["MIME-Version"]
    # Last: set_content and add_alternative move or drop the Content-* headers set before.
    msg["Content-Language"] = rendered.language
    return _with_to_and_subject(msg.as_bytes(policy=policy), destination, rendered.subject)


@lru_cache(maxsize=64)
def _language_bytes(tag: str) -> bytes:
    """The Content-Language header (RFC 3282) and the blank line that ends the headers."""
    return f"Content-Language: {tag}\r\n\r\n".encode("ascii")


@lru_cache(maxsize=256)
def _subject_bytes(subject: str) -> bytes:
    """The Subject header. Text that looks like an encoded word (``=?utf-8?q?...?=``, from a
    display name in an operator's template, say) is encoded itself, so that readers show it
    as written: handed to the stdlib, it would be decoded first, and an encoded CR LF would
    become a header of its own (``Bcc:``)."""
    if "=?" not in subject:
        return _header_bytes("Subject", subject)
    encoded = Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return f"Subject: {encoded}\r\n".encode("ascii")


def _with_to_and_subject(data: bytes, destination: str, subject: str) -> bytes:
    """``data`` with ``To: destination`` and the Subject after Reply-To, the address verbatim.

    The stdlib's address parser would read the destination: it decodes an encoded word even
    inside an addr-spec (RFC 2047 section 5 forbids that), so ``=?utf-8?q?a=40evil.example=2C_b?=
    @example.com`` became ``To: a@evil.example, b@example.com``. The header must name the
    envelope's one recipient, as Kanidm gave it.
    """
    if "\r" in destination or "\n" in destination:
        raise ValueError("a line break in the destination address")
    at = data.index(b"\r\nDate:") + 2  # From and Reply-To come first
    to = b"To: " + destination.encode("utf-8") + b"\r\n"
    return data[:at] + to + _subject_bytes(subject) + data[at:]
