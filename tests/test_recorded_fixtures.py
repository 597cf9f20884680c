"""The tests that replay recorded provider traffic skip without it, but fail under CI=true;
PROVIDER_FIXTURES_DIR points them at another folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import recorded_fixtures


def test_the_folder_is_found_here() -> None:
    # This checkout has the recordings (by default or through PROVIDER_FIXTURES_DIR), so the
    # replaying tests run rather than skip.
    assert recorded_fixtures.require_fixtures() == recorded_fixtures.fixtures_dir()


def test_provider_fixtures_dir_names_the_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROVIDER_FIXTURES_DIR", str(tmp_path))
    assert recorded_fixtures.fixtures_dir() == tmp_path
    (tmp_path / "manifest.json").write_text('{"fixtures": []}')
    assert recorded_fixtures.require_fixtures() == tmp_path


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_folder_fails_under_ci_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    missing = tmp_path / "absent"
    monkeypatch.setenv("PROVIDER_FIXTURES_DIR", str(missing))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome) as raised:
        recorded_fixtures.require_fixtures()
    message = str(raised.value)
    assert str(missing / "manifest.json") in message
    assert "PROVIDER_FIXTURES_DIR" in message
