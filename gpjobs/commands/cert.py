"""`gpjobs cert`: write a self-signed TLS certificate and key for local HTTPS.

`arcgis.gis.GIS()` insists on HTTPS for a portal (protocol.md §10), so a local gpjobs needs a certificate even
on loopback. The `cryptography` package is used when it imports (no subprocess, works everywhere Python does);
otherwise the `openssl` command line tool. Both write PEM files `<out>/gpjobs.crt` and `<out>/gpjobs.key`
(key mode 0600) for `tls_cert` / `tls_key` in the config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HELP = "write a self-signed TLS certificate and key (for tls_cert / tls_key)"

CERT_NAME = "gpjobs.crt"
KEY_NAME = "gpjobs.key"


class CertError(RuntimeError):
    """Neither backend could write the certificate; the message says what to install."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write gpjobs.crt and gpjobs.key into")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="DNS name or IP address the certificate is valid for (repeatable; default: localhost and 127.0.0.1)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument(
        "--backend",
        choices=("auto", "cryptography", "openssl"),
        default="auto",
        help="how to generate (default: cryptography when installed, else openssl)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def run(args: argparse.Namespace) -> int:
    cert, key = args.out / CERT_NAME, args.out / KEY_NAME
    if not args.force and (cert.exists() or key.exists()):
        print(f"gpjobs cert: {cert} or {key} already exists; pass --force to replace them", file=sys.stderr)
        return 1
    try:
        backend = write_self_signed(
            args.out, args.hosts or ["localhost", "127.0.0.1"], days=args.days, backend=args.backend
        )
    except CertError as exc:
        print(f"gpjobs cert: {exc}", file=sys.stderr)
        return 1
    print(f'wrote {cert} and {key} ({backend}); set tls_cert = "{cert}" and tls_key = "{key}"')
    return 0


def write_self_signed(out: Path, hosts: list[str], *, days: int = 365, backend: str = "auto") -> str:
    """Write `out/gpjobs.crt` + `out/gpjobs.key` valid for `hosts`; returns the backend used."""
    if not hosts:
        raise CertError("at least one --host is needed")
    out.mkdir(parents=True, exist_ok=True)
    if backend in ("auto", "cryptography"):
        try:
            import cryptography  # noqa: F401
        except ImportError:
            if backend == "cryptography":
                raise CertError("the cryptography package is not installed (pip install cryptography)") from None
        else:
            _write_with_cryptography(out, hosts, days)
            return "cryptography"
    if shutil.which("openssl") is None:
        raise CertError(
            "neither the cryptography package nor the openssl command is available; "
            "install one of them (pip install cryptography)"
        )
    _write_with_openssl(out, hosts, days)
    return "openssl"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start: the key must never be world-readable, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _write_with_cryptography(out: Path, hosts: list[str], days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gpjobs (self-signed)"),
        ]
    )
    alt = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        out / KEY_NAME,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    (out / CERT_NAME).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_with_openssl(out: Path, hosts: list[str], days: int) -> None:
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_key, tmp_cert = Path(tmp) / KEY_NAME, Path(tmp) / CERT_NAME
        cmd = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-sha256",
            "-days",
            str(days),
            "-subj",
            f"/CN={hosts[0]}/O=gpjobs (self-signed)",
            "-addext",
            f"subjectAltName={san}",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
            str(tmp_key),
            "-out",
            str(tmp_cert),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CertError(f"openssl failed ({proc.returncode}): {proc.stderr.strip()}")
        _write_private(out / KEY_NAME, tmp_key.read_bytes())
        (out / CERT_NAME).write_bytes(tmp_cert.read_bytes())
