"""``computewatch tls init|issue``: a private CA and short-lived certificates."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from computewatch.cli import cli


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_makes_a_ca_a_server_and_a_client_certificate(tmp_path: Path) -> None:
    site = tmp_path / "tls"
    res = CliRunner().invoke(
        cli, ["tls", "init", str(site), "--host", "collector.example", "--host", "10.0.0.7"]
    )
    assert res.exit_code == 0, res.output
    ca = _cert(site / "ca.pem")
    server = _cert(site / "collector.pem")
    client = _cert(site / "client.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert life <= datetime.timedelta(days=30, minutes=5)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"collector.example", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    addresses = set(san.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("127.0.0.1")} <= addresses
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for key in ("ca.key", "collector.key", "client.key"):
        assert (site / key).stat().st_mode & 0o777 == 0o600
    # A second init would replace the CA every certificate rests on: refused.
    again = CliRunner().invoke(cli, ["tls", "init", str(site)])
    assert again.exit_code == 1
    assert "--force" in again.output


def test_issue_signs_with_the_existing_ca_and_refuses_without_one(tmp_path: Path) -> None:
    site = tmp_path / "tls"
    missing = CliRunner().invoke(cli, ["tls", "issue", str(site), "gpu-017"])
    assert missing.exit_code == 1
    assert "tls init" in missing.output
    assert CliRunner().invoke(cli, ["tls", "init", str(site)]).exit_code == 0
    res = CliRunner().invoke(cli, ["tls", "issue", str(site), "gpu-017", "--days", "3"])
    assert res.exit_code == 0, res.output
    leaf = _cert(site / "gpu-017.pem")
    leaf.verify_directly_issued_by(_cert(site / "ca.pem"))
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(
        days=3, minutes=5
    )
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_collector_serve_refuses_plain_text_and_auth_off_unless_opted_out(tmp_path: Path) -> None:
    base = [
        "collector", "serve", "--ledger", str(tmp_path / "l.db"),
        "--key", str(tmp_path / "c.key"), "--listen", "127.0.0.1:0",
    ]  # fmt: skip
    no_tls = CliRunner().invoke(cli, base)
    assert no_tls.exit_code == 1
    assert "no TLS certificate" in no_tls.output
    assert "insecure_plaintext" in no_tls.output
    (tmp_path / "a.pub").write_text("unused\n")
    auditor = ["--auditor-key", str(tmp_path / "a.pub")]
    no_auth = CliRunner().invoke(
        cli, [*base, "--insecure-plaintext", "--insecure-no-auth", *auditor]
    )
    assert no_auth.exit_code == 1
    assert "require_auth = false with auditor_keys" in no_auth.output


def test_issue_refuses_a_name_that_is_not_a_plain_file_name(tmp_path: Path) -> None:
    """NAME becomes NAME.pem/NAME.key in the CA directory: a path, an empty
    name or ``ca`` (which would overwrite the CA's own key) is one typed line."""
    site = tmp_path / "tls"
    assert CliRunner().invoke(cli, ["tls", "init", str(site)]).exit_code == 0
    ca_key = (site / "ca.key").read_bytes()
    for name in ("", "../outside", "a/b", ".hidden", "ca", "x" * 65):
        res = CliRunner().invoke(cli, ["tls", "issue", str(site), "--", name])
        assert res.exit_code == 1, (name, res.output)
        assert res.output.startswith("Error: config: name "), (name, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert (site / "ca.key").read_bytes() == ca_key
    assert not (tmp_path / "outside.pem").exists()


def test_a_host_that_is_neither_a_dns_name_nor_an_address_is_refused(tmp_path: Path) -> None:
    for host in ("", "bad host!", "a..b", "-lead.example"):
        res = CliRunner().invoke(cli, ["tls", "init", str(tmp_path / "tls"), "--host", host])
        assert res.exit_code == 1, (host, res.output)
        assert res.output.startswith("Error: config: host "), (host, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "tls" / "ca.key").exists()
