"""The instance's base URL, parsed once, and upstream's rule for the links built on it."""

from __future__ import annotations

from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

__all__ = ["InstanceUrl", "action_url", "link_secrets"]


class InstanceUrl(str):
    """``instance_url`` as written (a ``str``), with its parts split once, where it entered."""

    scheme: str
    netloc: str
    query: str
    fragment: str

    def __new__(cls, value: str) -> InstanceUrl:
        """Parse ``value``; raises ValueError unless it is an absolute http(s) URL."""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute URL such as https://idm.example.com")
        try:
            port = parts.port  # urlsplit checks the range only when asked
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError("has a port outside 1-65535; reset links would carry it")
        self = super().__new__(cls, value)
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self.query, self.fragment = parts.query, parts.fragment
        return self


def action_url(instance_url: InstanceUrl, path: str, intent_id: str) -> str:
    """Upstream's link rule: replace the path, append ``token=<intent_id>`` to the query."""
    before = urlunsplit((instance_url.scheme, instance_url.netloc, path, "", ""))
    query = f"{instance_url.query}&" if instance_url.query else ""
    fragment = f"#{instance_url.fragment}" if instance_url.fragment else ""
    # What urlencode({"token": ...}) and urlunsplit give, without their generality.
    return f"{before}?{query}token={quote_plus(intent_id)}{fragment}"


def link_secrets(intent_id: str) -> tuple[str, ...]:
    """Every form in which a reset link's secret can come back in a relay's reply: plain,
    and URL-quoted as the link carries it (a content filter quotes the URL it refused)."""
    forms = {intent_id, quote_plus(intent_id), quote(intent_id, safe="")}
    return tuple(sorted(form for form in forms if form))
