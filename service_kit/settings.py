"""Typed reading of environment variables, once, at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service_kit.egress import ALLOWLIST_ENV, EgressPolicy
from service_kit.tls import TlsFiles

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class Env:
    """Reads one prefix's variables from a mapping (os.environ in production)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def string(self, name: str, default: str) -> str:
        return self._environ.get(name, "").strip() or default

    def optional(self, name: str) -> str | None:
        return self._environ.get(name, "").strip() or None

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")

    def egress_policy(self) -> EgressPolicy:
        """The provider egress allowlist, shared by both services."""
        try:
            return EgressPolicy.parse(self._environ.get(ALLOWLIST_ENV, ""))
        except ValueError as exc:
            raise SettingsError(f"{ALLOWLIST_ENV}: {exc}") from None

    def path(self, name: str, default: Path) -> Path:
        raw = self._environ.get(name, "").strip()
        return Path(raw) if raw else default


@dataclass(frozen=True)
class ServerSettings:
    """What every service's gRPC server needs."""

    listen_address: str
    tls: TlsFiles
    policy_file: Path
    metrics_port: int  # 0 disables the Prometheus endpoint
    grace_seconds: float
    log_level: str
    db_pool_min: int
    db_pool_max: int
    workers: int = 1  # processes serving the port together (SO_REUSEPORT)
    # At the start of a drain: answer health checks NOT_SERVING while still serving calls.
    announce_seconds: float = 1.0
    reuse_port: bool = False  # set in worker processes so that they can share the port
    health_port: int = 0  # > 0: plaintext grpc.health.v1 alone there, for probes; 0: none

    @classmethod
    def from_env(
        cls,
        env: Env,
        *,
        prefix: str,
        workload: str,
        default_address: str,
        default_policy: Path,
        default_metrics_port: int,
    ) -> ServerSettings:
        certs_dir = env.path("CERTS_DIR", PROJECT_ROOT / "certs")
        default_tls = TlsFiles.for_workload(certs_dir, workload)
        return cls(
            listen_address=env.string(f"{prefix}_LISTEN_ADDRESS", default_address),
            tls=TlsFiles(
                cert=env.path(f"{prefix}_TLS_CERT", default_tls.cert),
                key=env.path(f"{prefix}_TLS_KEY", default_tls.key),
                ca=env.path("TLS_CA", default_tls.ca),
            ),
            policy_file=env.path(f"{prefix}_AUTHZ_POLICY", default_policy),
            metrics_port=env.integer(f"{prefix}_METRICS_PORT", default_metrics_port, maximum=65535),
            grace_seconds=env.number("SHUTDOWN_GRACE_SECONDS", 10.0),
            log_level=env.string("LOG_LEVEL", "INFO"),
            db_pool_min=env.integer(f"{prefix}_DB_POOL_MIN", 2, minimum=1),
            db_pool_max=env.integer(f"{prefix}_DB_POOL_MAX", 10, minimum=1),
            workers=env.integer(f"{prefix}_WORKERS", 1, minimum=1, maximum=64),
            announce_seconds=env.number("SHUTDOWN_ANNOUNCE_SECONDS", 1.0),
            health_port=env.integer(f"{prefix}_HEALTH_PORT", 0, maximum=65535),
        )
