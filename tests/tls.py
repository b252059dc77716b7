"""Throwaway TLS certificates for the wss:// tests and the benchmark (``trustme``).

    files = make_tls_files(tmp_dir)           # a new CA, an intermediate, a server certificate for 127.0.0.1, localhost, ::1
    files.cert, files.key, files.ca           # cert.pem (server certificate, then the intermediate), key.pem, ca.pem (root)
    files.server_context()                    # an ssl.SSLContext serving that certificate
    files.client_context()                    # an ssl.SSLContext trusting that CA (and nothing else)

The ``tls_files`` fixture (tests/conftest.py) makes one set per session. Every
context is built from the files, so a test over TLS also proves that
``--certfile cert.pem --keyfile key.pem`` and ``--cafile ca.pem`` are enough.
``trustme`` is imported only when files are made.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TLSFiles:
    """A CA and a server certificate on disk: ``cert.pem`` (chain), ``key.pem`` and ``ca.pem`` in ``directory``."""

    directory: Path
    cert: Path  # the server certificate, then the intermediate CA that issued it (not the root)
    key: Path  # the server certificate's private key, unencrypted
    ca: Path  # the CA certificate a client must trust
    hosts: tuple[str, ...]  # the names and addresses the server certificate is valid for

    def server_context(self) -> ssl.SSLContext:
        """A server-side context with ``cert.pem`` and ``key.pem`` (a new one per call)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts ``ca.pem`` only, checking the host name (a new one per call)."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))


def make_tls_files(directory: str | os.PathLike[str], hosts: Sequence[str] = HOSTS) -> TLSFiles:
    """Make a new CA and a server certificate for ``hosts``; write them into ``directory`` (which must exist)."""
    import trustme

    where = Path(directory)
    ca = trustme.CA()
    # Issued by an intermediate CA, so cert.pem holds a real chain: a server that sends only its own
    # certificate fails every client here, as it would fail browsers.
    issued = ca.create_child_ca().issue_cert(*hosts)
    files = TLSFiles(where, where / "cert.pem", where / "key.pem", where / "ca.pem", tuple(hosts))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    os.chmod(files.key, 0o600)
    ca.cert_pem.write_to_path(str(files.ca))
    return files
