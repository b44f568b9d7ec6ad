"""A private CA and short-lived certificates for a small site (``computewatch tls``).

``init_ca`` writes ``ca.pem``/``ca.key`` (ECDSA P-256, 10 years by default);
``issue`` writes ``<name>.pem``/``<name>.key``: a leaf signed by that CA with
SANs for the given host names and addresses (loopback always included for a
server), serverAuth and/or clientAuth, valid ``days`` (short by default:
re-issue and the collector picks the new files up without a restart). Private
keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 30
LOOPBACK = ("localhost", "127.0.0.1", "::1")
# A leaf's name is also its file name in the CA directory: no path parts,
# no leading dot or dash, at most 64 characters (the X.509 CN limit).
_LEAF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A SAN DNS name: dot-separated labels of letters, digits and inner hyphens,
# optionally a leading wildcard label.
_HOSTNAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "computewatch"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _HOSTNAME.fullmatch(host) or len(host) > 253:
                raise ConfigError(f"host {host!r}: expected a DNS name or an IP address") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_ca(directory: Path, *, days: int = CA_DAYS, force: bool = False) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    out = Issued(directory / "ca.pem", directory / "ca.key")
    if out.key.exists() and not force:
        raise ConfigError(f"{out.key} exists; pass --force to replace the CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("computewatch private CA"))
        .issuer_name(_name("computewatch private CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key, out.key)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def issue(
    directory: Path,
    name: str,
    hosts: tuple[str, ...] = (),
    *,
    server: bool = True,
    client: bool = False,
    days: int = LEAF_DAYS,
) -> Issued:
    """A leaf for ``name`` signed by the CA in ``directory``."""
    if not _LEAF_NAME.fullmatch(name) or name == "ca":
        raise ConfigError(
            f"name {name!r}: expected 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -),"
            " and not 'ca'"
        )
    if not (server or client):
        raise ConfigError("a certificate must be for a server, a client or both")
    if days < 1:
        raise ConfigError(f"days = {days}: expected at least 1")
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the CA in {directory} (run `tls init`): {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / 'ca.key'} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    sans = (name, *hosts, *(LOOPBACK if server else ()))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(_san(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = Issued(directory / f"{name}.pem", directory / f"{name}.key")
    _write_key(key, out.key)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def init_site(
    directory: Path, hosts: tuple[str, ...] = (), *, days: int = LEAF_DAYS, force: bool = False
) -> dict[str, Issued]:
    """CA, a collector server certificate and a client certificate (agents, authorities)."""
    _san((*hosts, *LOOPBACK))  # a bad --host is refused before any file is written
    return {
        "ca": init_ca(directory, force=force),
        "collector": issue(directory, "collector", hosts, days=days),
        "client": issue(directory, "client", (), server=False, client=True, days=days),
    }
