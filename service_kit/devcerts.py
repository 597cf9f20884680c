"""Development PKI: a CA and one certificate per workload, each with a SPIFFE URI SAN.

`python -m service_kit.devcerts [--dir certs] [--force]` writes `ca.pem`, `ca-key.pem` and
`NAME.pem` / `NAME-key.pem` for every workload. Existing files are kept unless --force, so
`make run` can call it every time. Tests use the same functions to mint hostile certificates
(another CA, expired).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TRUST_DOMAIN = "agents.internal"
WORKLOADS = ("keyvault", "execution", "app", "admin")
SERVER_WORKLOADS = frozenset({"keyvault", "execution"})
_ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def spiffe_id(workload: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/{workload}"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str = "agents development CA", days: int = 3650) -> Issued:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued,
    workload: str,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    server: bool | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """Issue a workload certificate whose single URI SAN is the workload's SPIFFE ID.

    A server certificate also names ``localhost``, ``127.0.0.1`` and the workload itself as
    a host (``keyvault``: the service's host name in docker-compose.yml)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    is_server = workload in SERVER_WORKLOADS if server is None else server
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(workload, trust_domain))
    ]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if is_server:
        sans += [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName(workload),
        ]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, workload)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _ONE_DAY)
        .not_valid_after(not_after or now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def write_dev_certs(
    directory: Path, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, force: bool = False
) -> bool:
    """Write the development PKI into `directory`. Returns False when it already existed."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [directory / "ca.pem"] + [directory / f"{w}.pem" for w in WORKLOADS]
    if not force and all(p.exists() for p in wanted):
        return False
    ca = make_ca()
    _write(directory / "ca.pem", ca.cert_pem, private=False)
    _write(directory / "ca-key.pem", ca.key_pem, private=True)
    for workload in WORKLOADS:
        issued = issue(ca, workload, trust_domain=trust_domain)
        _write(directory / f"{workload}.pem", issued.cert_pem, private=False)
        _write(directory / f"{workload}-key.pem", issued.key_pem, private=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("certs"))
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument("--force", action="store_true", help="replace existing certificates")
    args = parser.parse_args(argv)
    made = write_dev_certs(args.dir, trust_domain=args.trust_domain, force=args.force)
    print(f"{'wrote' if made else 'kept existing'} development certificates in {args.dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
