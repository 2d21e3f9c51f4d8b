"""kanidm-mail-sender: relays Kanidm's outbound message queue over TLS SMTP."""

__version__ = "0.1.0"
__all__ = ["__version__"]
