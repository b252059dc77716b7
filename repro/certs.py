"""A throwaway certificate for the wss:// repro (``python -m repro --tls``, ``repro serve --tls``).

    files = make_cert_files(directory)   # cert.pem (chain), key.pem, ca.pem in directory
    files.server_context(), files.client_context()

The repro's runtime dependencies do not include a certificate library, so this
tries, in order: ``trustme`` (the test extra: a CA and a server certificate
issued by it), the ``cryptography`` package (the same, by hand), and the
``openssl`` command (one self-signed certificate that is its own CA). When
none is there, :class:`CertError` says how to get one. The certificate is for
127.0.0.1, ::1 and localhost, and only a client told to trust ``ca.pem``
trusts it: nothing is added to any trust store.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOSTS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")

INSTALL_HINT = ("python -m repro --tls needs a throwaway certificate: install trustme (pip install trustme, or "
                "pip install -e '.[test]') or cryptography, or put the openssl command on PATH; or bring your own "
                "with repro serve --certfile/--keyfile")


class CertError(Exception):
    """No way to make a certificate here; the message says what to install."""


@dataclass(frozen=True)
class CertFiles:
    directory: Path
    cert: Path  # the server's certificate chain (PEM)
    key: Path  # its private key (PEM, unencrypted)
    ca: Path  # what a client must trust (PEM)
    made_with: str  # "trustme", "cryptography" or "openssl"

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Trusts ``ca.pem`` and nothing else; checks the host name."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))


def make_cert_files(directory: str | os.PathLike[str], hosts: Sequence[str] = HOSTS, prefer: Sequence[str] = ()) -> CertFiles:
    """A new certificate for ``hosts`` in ``directory`` (which must exist). ``prefer``: try these makers first (tests)."""
    where = Path(directory)
    makers = {"trustme": _with_trustme, "cryptography": _with_cryptography, "openssl": _with_openssl}
    order = [m for m in prefer if m in makers] + [m for m in makers if m not in prefer]
    for name in order:
        try:
            made = makers[name](where, hosts)
        except (ImportError, FileNotFoundError):
            continue
        os.chmod(made.key, 0o600)
        return made
    raise CertError(INSTALL_HINT)


def _files(where: Path, made_with: str) -> CertFiles:
    return CertFiles(where, where / "cert.pem", where / "key.pem", where / "ca.pem", made_with)


def _with_trustme(where: Path, hosts: Sequence[str]) -> CertFiles:
    import trustme

    files = _files(where, "trustme")
    ca = trustme.CA()
    issued = ca.issue_cert(*hosts)
    files.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


def _with_cryptography(where: Path, hosts: Sequence[str]) -> CertFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = _files(where, "cryptography")
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsrace repro throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _with_openssl(where: Path, hosts: Sequence[str]) -> CertFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl")
    files = _files(where, "openssl")
    san = ",".join(("IP:" if _is_ip(h) else "DNS:") + h for h in hosts)
    # One self-signed certificate: the client trusts it as its own CA (ca.pem is a copy).
    cmd = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", str(files.key), "-out", str(files.cert), "-days", "30", "-subj", f"/CN={hosts[0]}",
           "-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CertError(f"openssl req failed ({proc.stderr.strip()[-300:]}); {INSTALL_HINT}")
    shutil.copyfile(files.cert, files.ca)
    return files


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
