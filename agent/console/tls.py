"""The LAN mode's certificate: self-signed, made once with the `openssl` command, kept in the store.

openssl rather than the `cryptography` package: it is on every Debian car
computer already (the MQTT TLS needs it too), and the agent keeps one
dependency fewer. The owner checks the printed SHA-256 fingerprint against
the one the phone's browser shows, once, when it first connects.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path

from carledger.console import CONSOLE_DIR
from carledger.ledger.files import private_dir

CERT_FILE, KEY_FILE = "console-cert.pem", "console-key.pem"
CERT_DAYS = 825  # the longest validity browsers accept for a leaf certificate


class TlsError(Exception):
    """The certificate cannot be made or read: one line saying why."""


def certificate(store: str | Path, address: str) -> tuple[Path, Path, str]:
    """(certificate, key, SHA-256 fingerprint) for serving on `address`; made on first use.

    The certificate names `address` (and localhost) as subject alternative
    names; a certificate made for another address is kept: the fingerprint,
    not the name, is what the owner checks.
    """
    folder = private_dir(Path(store) / CONSOLE_DIR)
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    if not (cert.is_file() and key.is_file()):
        _make(cert, key, address)
    return cert, key, fingerprint(cert)


def fingerprint(cert: Path) -> str:
    """The SHA-256 of the certificate's DER form, as browsers show it (AA:BB:...)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{cert}: not a readable PEM certificate ({exc}); delete it and start again to make a new one") from None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or later, the certificate and key from the store."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{cert}: cannot load the console's certificate and key ({exc}); delete both to make new ones") from None
    return context


def _make(cert: Path, key: Path, address: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError("the LAN mode needs the `openssl` command to make its certificate (Debian: apt install openssl)")
    try:
        ipaddress.ip_address(address)
        names = f"IP:{address},DNS:localhost"
    except ValueError:
        names = f"DNS:{address},DNS:localhost"
    tmp_key = key.with_name(f".{key.name}.tmp")
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", str(CERT_DAYS), "-subj", "/CN=carledger console", "-addext", f"subjectAltName={names}",
         "-keyout", str(tmp_key), "-out", str(cert)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        tmp_key.unlink(missing_ok=True)
        raise TlsError(f"openssl could not make the console's certificate: {done.stderr.strip().splitlines()[-1:]}")
    tmp_key.chmod(0o600)
    cert.chmod(0o600)  # like every file of the store (docs/store-format.md)
    tmp_key.replace(key)
