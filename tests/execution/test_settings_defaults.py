"""The execution service's settings say each default once: an empty environment gives the
dataclasses' defaults, and each variable overrides only its own setting."""

from __future__ import annotations

import dataclasses

from execution_service import settings
from execution_service.retry import DEFAULT_POLICY, RetryPolicy
from execution_service.settings import EngineSettings, ExecutionSettings


def test_an_empty_environment_gives_the_declared_defaults() -> None:
    loaded = ExecutionSettings.from_env({})
    assert loaded.engine == EngineSettings()
    assert loaded.maintenance == settings.MaintenanceSettings()
    assert loaded.engine.retry == DEFAULT_POLICY == RetryPolicy()
    assert loaded.keyvault_address == settings.DEFAULT_KEYVAULT_ADDRESS
    assert loaded.server.listen_address == settings.DEFAULT_ADDRESS
    assert loaded.server.metrics_port == settings.DEFAULT_METRICS_PORT
    assert loaded.server.policy_file == settings.DEFAULT_POLICY
    assert loaded.database_url is None


def test_each_variable_overrides_its_own_setting_only() -> None:
    loaded = ExecutionSettings.from_env(
        {"KEY_CACHE_TTL_SECONDS": "0", "RETRY_MAX_ATTEMPTS": "5", "STORE_OUTPUT": "false"}
    )
    assert loaded.engine == dataclasses.replace(
        EngineSettings(),
        key_cache_ttl=0.0,
        store_output=False,
        retry=dataclasses.replace(DEFAULT_POLICY, max_attempts=5),
    )


def test_retention_and_output_limit_settings() -> None:
    loaded = ExecutionSettings.from_env(
        {
            "EXECUTION_RETENTION_DAYS": "30",
            "ROLLUP_RETENTION_DAYS": "400",
            "STORE_OUTPUT_MAX_BYTES": "65536",
        }
    )
    assert loaded.maintenance == settings.MaintenanceSettings(
        execution_retention_days=30, rollup_retention_days=400
    )
    assert loaded.engine == dataclasses.replace(EngineSettings(), store_output_max_bytes=65536)
