"""The execution service's configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from execution_service.retry import DEFAULT_POLICY as DEFAULT_RETRY_POLICY
from execution_service.retry import RetryPolicy
from service_kit.egress import NO_ALLOWLIST, EgressPolicy
from service_kit.settings import Env, ServerSettings
from service_kit.tls import TlsFiles

# Every default is written once, here; the dataclasses and from_env both use these.
DEFAULT_ADDRESS = "127.0.0.1:50052"
DEFAULT_POLICY = Path(__file__).with_name("authz_policy.json")
DEFAULT_METRICS_PORT = 9452
DEFAULT_KEYVAULT_ADDRESS = "localhost:50051"
# Anthropic requires max_tokens; OpenAI gets none unless the request asks.
DEFAULT_MAX_TOKENS = 1024
DEFAULT_STORE_OUTPUT = True
DEFAULT_KEY_CACHE_TTL = 30.0  # seconds; 0 disables the cache
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_SWEEP_INTERVAL = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 600.0  # between bytes of a provider's answer
# A terminal record the database refused is retried with FINISH_RETRY_BACKOFF for this long.
DEFAULT_FINISH_RETRY_SECONDS = 600.0
# Stored output text is cut to this many bytes of UTF-8 (0: no limit).
DEFAULT_STORE_OUTPUT_MAX_BYTES = 0
# Upkeep of the partitioned executions table and its rollups (execution_service.maintenance).
DEFAULT_MAINTENANCE_INTERVAL = 30.0
DEFAULT_PARTITIONS_AHEAD_WEEKS = 2
DEFAULT_EXECUTION_RETENTION_DAYS = 0  # 0: kept forever
DEFAULT_ROLLUP_RETENTION_DAYS = 0  # 0: kept forever
# The retry defaults are RetryPolicy's own (execution_service/retry.py).
# Retrying a terminal record during a database outage: 0.5 s, 1 s, 2 s ... capped at 5 s, so
# the record lands within about 5 s of the database's return.
FINISH_RETRY_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=5.0)


@dataclass(frozen=True)
class EngineSettings:
    """How executions run."""

    retry: RetryPolicy = DEFAULT_RETRY_POLICY
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    store_output: bool = DEFAULT_STORE_OUTPUT
    store_output_max_bytes: int = DEFAULT_STORE_OUTPUT_MAX_BYTES
    key_cache_ttl: float = DEFAULT_KEY_CACHE_TTL
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    finish_retry_seconds: float = DEFAULT_FINISH_RETRY_SECONDS
    finish_retry_backoff: RetryPolicy = FINISH_RETRY_BACKOFF
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    openai_base_url: str | None = None  # None: https://api.openai.com
    anthropic_base_url: str | None = None  # None: https://api.anthropic.com
    pricing_file: Path | None = None  # None: the packaged execution_service/pricing.json
    egress: EgressPolicy = NO_ALLOWLIST  # the operator's allowlist; see provider_egress

    def provider_egress(self) -> EgressPolicy:
        """The allowlist plus the hosts of the configured default base URLs: the operator
        chose those, so they are trusted like allowlisted hosts."""
        defaults = [
            urlsplit(u).hostname for u in (self.openai_base_url, self.anthropic_base_url) if u
        ]
        return self.egress.with_hosts(*(h for h in defaults if h))


@dataclass(frozen=True)
class MaintenanceSettings:
    """Partitions ahead, rollup folding and retention (execution_service.maintenance)."""

    interval_seconds: float = DEFAULT_MAINTENANCE_INTERVAL
    partitions_ahead_weeks: int = DEFAULT_PARTITIONS_AHEAD_WEEKS
    execution_retention_days: int = DEFAULT_EXECUTION_RETENTION_DAYS
    rollup_retention_days: int = DEFAULT_ROLLUP_RETENTION_DAYS


@dataclass(frozen=True)
class ExecutionSettings:
    server: ServerSettings
    database_url: str | None
    keyvault_address: str
    keyvault_tls: TlsFiles  # the execution workload's client certificate for the vault
    engine: EngineSettings
    maintenance: MaintenanceSettings = MaintenanceSettings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ExecutionSettings:
        env = Env(environ)
        server = ServerSettings.from_env(
            env,
            prefix="EXECUTION",
            workload="execution",
            default_address=DEFAULT_ADDRESS,
            default_policy=DEFAULT_POLICY,
            default_metrics_port=DEFAULT_METRICS_PORT,
        )
        pricing = env.optional("PRICING_FILE")
        retry_defaults = DEFAULT_RETRY_POLICY
        return cls(
            server=server,
            database_url=env.optional("EXECUTION_DATABASE_URL"),
            keyvault_address=env.string("KEYVAULT_ADDRESS", DEFAULT_KEYVAULT_ADDRESS),
            keyvault_tls=server.tls,
            engine=EngineSettings(
                retry=RetryPolicy(
                    max_attempts=env.integer(
                        "RETRY_MAX_ATTEMPTS", retry_defaults.max_attempts, minimum=1, maximum=10
                    ),
                    base_delay=env.number("RETRY_BASE_DELAY_SECONDS", retry_defaults.base_delay),
                    max_delay=env.number("RETRY_MAX_DELAY_SECONDS", retry_defaults.max_delay),
                    jitter=min(env.number("RETRY_JITTER", retry_defaults.jitter), 1.0),
                ),
                default_max_tokens=env.integer(
                    "DEFAULT_MAX_TOKENS", DEFAULT_MAX_TOKENS, minimum=1, maximum=200_000
                ),
                store_output=env.flag("STORE_OUTPUT", DEFAULT_STORE_OUTPUT),
                store_output_max_bytes=env.integer(
                    "STORE_OUTPUT_MAX_BYTES", DEFAULT_STORE_OUTPUT_MAX_BYTES, minimum=0
                ),
                key_cache_ttl=env.number("KEY_CACHE_TTL_SECONDS", DEFAULT_KEY_CACHE_TTL),
                lease_seconds=env.number(
                    "EXECUTION_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, minimum=1.0
                ),
                sweep_interval=env.number(
                    "EXECUTION_SWEEP_INTERVAL_SECONDS", DEFAULT_SWEEP_INTERVAL, minimum=0.1
                ),
                finish_retry_seconds=env.number(
                    "EXECUTION_FINISH_RETRY_SECONDS", DEFAULT_FINISH_RETRY_SECONDS
                ),
                connect_timeout=env.number(
                    "PROVIDER_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT, minimum=0.1
                ),
                read_timeout=env.number(
                    "PROVIDER_READ_TIMEOUT_SECONDS", DEFAULT_READ_TIMEOUT, minimum=1.0
                ),
                openai_base_url=env.optional("OPENAI_BASE_URL"),
                anthropic_base_url=env.optional("ANTHROPIC_BASE_URL"),
                pricing_file=Path(pricing) if pricing else None,
                egress=env.egress_policy(),
            ),
            maintenance=MaintenanceSettings(
                interval_seconds=env.number(
                    "MAINTENANCE_INTERVAL_SECONDS", DEFAULT_MAINTENANCE_INTERVAL, minimum=1.0
                ),
                partitions_ahead_weeks=env.integer(
                    "PARTITIONS_AHEAD_WEEKS", DEFAULT_PARTITIONS_AHEAD_WEEKS, minimum=1, maximum=52
                ),
                execution_retention_days=env.integer(
                    "EXECUTION_RETENTION_DAYS", DEFAULT_EXECUTION_RETENTION_DAYS, minimum=0
                ),
                rollup_retention_days=env.integer(
                    "ROLLUP_RETENTION_DAYS", DEFAULT_ROLLUP_RETENTION_DAYS, minimum=0
                ),
            ),
        )


def stored_text(text: str, settings: EngineSettings) -> str | None:
    """The output text as stored: none without STORE_OUTPUT, else at most
    `store_output_max_bytes` bytes of UTF-8 (0: all of it), cut at a character boundary."""
    if not settings.store_output:
        return None
    limit = settings.store_output_max_bytes
    if not limit:
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")
