"""Where the recorded provider traffic is, for the tests that replay it.

The recordings (real OpenAI and Anthropic streams, non-streamed answers and error bodies,
with a `manifest.json` naming the parse each must give) are kept outside this repository,
by default in `../shared/provider-fixtures` beside the project folder. PROVIDER_FIXTURES_DIR
points at another folder. Without the folder these tests skip, except under `CI=true`,
where they fail: a CI run must not pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_VAR = "PROVIDER_FIXTURES_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "provider-fixtures"


def fixtures_dir() -> Path:
    """The folder PROVIDER_FIXTURES_DIR names, or the default one."""
    configured = os.environ.get(ENV_VAR)
    return Path(configured).expanduser() if configured else DEFAULT_DIR


def available() -> bool:
    return (fixtures_dir() / "manifest.json").is_file()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_message() -> str:
    return (
        f"recorded provider fixtures not found: expected {fixtures_dir() / 'manifest.json'}. "
        f"Set {ENV_VAR} to the folder that holds manifest.json "
        f"(e.g. {ENV_VAR}=/path/to/provider-fixtures)."
    )


def require_fixtures() -> Path:
    """The fixtures folder; when it is missing, skip the calling test, or fail it in CI."""
    if not available():
        if in_ci():
            pytest.fail(f"CI=true: {missing_message()}", pytrace=False)
        pytest.skip(missing_message())
    return fixtures_dir()
