"""A throw-away certificate authority and a server certificate for 127.0.0.1 and localhost."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    """Paths of the CA and server files, and a ready server-side TLS context."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting the leaf certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context trusting only this CA."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        return context


def make_certs(directory: Path) -> Certs:
    """Create ``ca.pem``, ``server.crt`` and ``server.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    certs = Certs(directory / "ca.pem", directory / "server.crt", directory / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca_path))
    leaf.private_key_pem.write_to_path(str(certs.key_path))
    certs.key_path.chmod(0o600)
    with certs.cert_path.open("wb") as out:
        for blob in leaf.cert_chain_pems:
            out.write(blob.bytes())
    return certs
