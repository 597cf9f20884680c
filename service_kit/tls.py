"""mTLS credentials: server credentials that reload from disk, client channels, peer identity."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


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
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

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
