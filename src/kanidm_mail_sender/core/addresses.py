"""Mail address checks, close to what upstream's ``lettre::Address`` accepts."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

__all__ = ["check_address", "domain_of"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[^"\\\r\n]|\\[^\r\n])*"')
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _check_domain(domain: str) -> None:
    problem = _domain_problem(domain)
    if problem is not None:
        raise ValueError(problem)


@lru_cache(maxsize=1024)
def _domain_problem(domain: str) -> str | None:
    """Why ``domain`` is not a valid mail domain, or None; cached, as a queue's addresses
    share a few domains and the IDNA codec is a noticeable share of a mail's CPU."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return f"{domain!r} is not a valid address literal"
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return f"the domain {domain!r} is not a valid host name"
    labels = ascii_domain.rstrip(".").split(".")
    if not ascii_domain or len(ascii_domain) > 253 or not all(map(_LABEL.fullmatch, labels)):
        return f"the domain {domain!r} is not a valid host name"
    return None


def check_address(text: str) -> str:
    """Return ``text`` if it is a valid ``local@domain`` address, else raise ValueError."""
    if not isinstance(text, str) or not text:
        raise ValueError("an address cannot be empty")
    if any(c in text for c in "\r\n\0") or text != text.strip():
        raise ValueError(f"{text!r} contains whitespace or control characters around it")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{text!r} is not of the form local-part@domain")
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise ValueError(f"the local part of {text!r} is not valid")
    _check_domain(domain)
    if len(text) > 320:
        raise ValueError(f"{text[:40]!r}... is longer than an address can be")
    return text


def domain_of(address: str) -> str:
    """The domain part of a checked address, for Message-ID right-hand sides."""
    return address.rpartition("@")[2].strip("[]") or "localhost"
