"""The execution service's configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from execution_service.retry import DEFAULT_POLICY as DEFAULT_RETRY_POLICY
from execution_service.retry import RetryPolicy
from service_kit.settings import Env, ServerSettings
from service_kit.tls import TlsFiles

DEFAULT_ADDRESS = "127.0.0.1:50052"
DEFAULT_POLICY = Path(__file__).with_name("authz_policy.json")
# Retrying a terminal record during a database outage: 0.5 s, 1 s, 2 s ... capped at 5 s, so
# the record lands within about 5 s of the database's return.
FINISH_RETRY_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=5.0)


@dataclass(frozen=True)
class EngineSettings:
    """How executions run."""

    retry: RetryPolicy = DEFAULT_RETRY_POLICY
    default_max_tokens: int = 1024  # Anthropic requires max_tokens; OpenAI gets none unless asked
    store_output: bool = True
    key_cache_ttl: float = 30.0  # seconds; 0 disables the cache
    lease_seconds: float = 30.0
    sweep_interval: float = 10.0
    # A terminal record the database refused is retried with this backoff for this long.
    finish_retry_seconds: float = 600.0
    finish_retry_backoff: RetryPolicy = FINISH_RETRY_BACKOFF
    connect_timeout: float = 5.0
    read_timeout: float = 600.0  # between bytes of a provider's answer
    openai_base_url: str | None = None  # None: https://api.openai.com
    anthropic_base_url: str | None = None  # None: https://api.anthropic.com
    pricing_file: Path | None = None  # None: the packaged execution_service/pricing.json


@dataclass(frozen=True)
class ExecutionSettings:
    server: ServerSettings
    database_url: str | None
    keyvault_address: str
    keyvault_tls: TlsFiles  # the execution workload's client certificate for the vault
    engine: EngineSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ExecutionSettings:
        env = Env(environ)
        server = ServerSettings.from_env(
            env,
            prefix="EXECUTION",
            workload="execution",
            default_address=DEFAULT_ADDRESS,
            default_policy=DEFAULT_POLICY,
            default_metrics_port=9452,
        )
        pricing = env.optional("PRICING_FILE")
        return cls(
            server=server,
            database_url=env.optional("EXECUTION_DATABASE_URL"),
            keyvault_address=env.string("KEYVAULT_ADDRESS", "localhost:50051"),
            keyvault_tls=server.tls,
            engine=EngineSettings(
                retry=RetryPolicy(
                    max_attempts=env.integer("RETRY_MAX_ATTEMPTS", 3, minimum=1, maximum=10),
                    base_delay=env.number("RETRY_BASE_DELAY_SECONDS", 1.0),
                    max_delay=env.number("RETRY_MAX_DELAY_SECONDS", 10.0),
                    jitter=min(env.number("RETRY_JITTER", 0.25), 1.0),
                ),
                default_max_tokens=env.integer(
                    "DEFAULT_MAX_TOKENS", 1024, minimum=1, maximum=200_000
                ),
                store_output=env.flag("STORE_OUTPUT", True),
                key_cache_ttl=env.number("KEY_CACHE_TTL_SECONDS", 30.0),
                lease_seconds=env.number("EXECUTION_LEASE_SECONDS", 30.0, minimum=1.0),
                sweep_interval=env.number("EXECUTION_SWEEP_INTERVAL_SECONDS", 10.0, minimum=0.1),
                finish_retry_seconds=env.number("EXECUTION_FINISH_RETRY_SECONDS", 600.0),
                connect_timeout=env.number("PROVIDER_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1),
                read_timeout=env.number("PROVIDER_READ_TIMEOUT_SECONDS", 600.0, minimum=1.0),
                openai_base_url=env.optional("OPENAI_BASE_URL"),
                anthropic_base_url=env.optional("ANTHROPIC_BASE_URL"),
                pricing_file=Path(pricing) if pricing else None,
            ),
        )
