"""mTLS credentials: server credentials that reload from disk, client channels, peer identity."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)


class TlsFileError(OSError):
    """A certificate, private key or CA file that is missing, unreadable or not PEM; the
    message names the file and never quotes its content."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    try:
        if what == "private key":
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError) as exc:  # TypeError: a key that needs a password
        raise TlsFileError(f"the {what} {path} is not a usable PEM {what}") from exc
    return data


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a workload's certificate, its key, and the CA that signs its peers."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def for_workload(cls, certs_dir: Path, workload: str) -> TlsFiles:
        return cls(
            certs_dir / f"{workload}.pem", certs_dir / f"{workload}-key.pem", certs_dir / "ca.pem"
        )

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The three files' bytes; TlsFileError when one is missing or not PEM (gRPC would
        only say that creating the credentials failed)."""
        return (
            _read(self.cert, "certificate"),
            _read(self.key, "private key"),
            _read(self.ca, "CA certificate"),
        )

    def mtimes(self) -> tuple[int, ...]:
        return tuple(os.stat(p).st_mtime_ns for p in (self.cert, self.key, self.ca))


class _ReloadingCertificates:
    """gRPC calls `fetch` before every TLS handshake: a stat of three files is cheap, and the
    files are read again only when one of them changed."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._mtimes = files.mtimes()
        self.initial = self._config()

    def _config(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = self._files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            mtimes = self._files.mtimes()
            with self._lock:
                if mtimes == self._mtimes:
                    return None
                config = self._config()
                self._mtimes = mtimes
        except (OSError, ValueError) as exc:
            # A half-written file during rotation: keep serving with the current certificate.
            log.warning(
                "certificate reload failed; keeping the current one", extra={"error": str(exc)}
            )
            return None
        log.info("server certificate reloaded", extra={"cert": str(self._files.cert)})
        return config


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by `files.ca`."""
    reloader = _ReloadingCertificates(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader.fetch,  # type: ignore[arg-type]  # None means keep the current certificate
        require_client_authentication=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's SPIFFE ID from its verified certificate, or None when it presented none."""
    values = list(context.auth_context().get("peer_spiffe_id", ()))
    return values[0].decode() if values else None
