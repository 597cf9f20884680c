"""requirements/runtime.lock: the exact versions the container image installs.

The image's dependencies are the project's runtime dependencies (not its extras: no
embedded PostgreSQL, no test tools) and everything they need, pinned at the versions
installed in the development environment, where the test suite ran against them.

    make lock     # rewrite the lock from .venv after changing a dependency
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = PROJECT_ROOT / "requirements" / "runtime.lock"
HEADER = (
    "# The container image's dependencies, pinned: `make lock` writes this file from the\n"
    "# versions installed in .venv (the project's runtime dependencies and what they need;\n"
    "# no extras). The Dockerfile installs exactly these, then the project with --no-deps.\n"
)


def runtime_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return [Requirement(line) for line in pyproject["project"]["dependencies"]]


def applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether a requirement holds here, for a distribution installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def runtime_closure() -> dict[str, str]:
    """Canonical name -> installed version, for the runtime dependencies and everything
    they require here (this interpreter, this platform: the image's Python and Linux)."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [r for r in runtime_requirements() if applies(r, frozenset())]
    while pending:
        requirement = pending.pop()
        extras = frozenset(requirement.extras)
        name = canonicalize_name(requirement.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        distribution = metadata.distribution(requirement.name)
        pinned[name] = distribution.version
        needed = (Requirement(line) for line in distribution.requires or [])
        pending.extend(r for r in needed if applies(r, extras))
    return dict(sorted(pinned.items()))


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


def read_lock(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def main() -> int:
    LOCK_FILE.parent.mkdir(exist_ok=True)
    LOCK_FILE.write_text(render(runtime_closure()))
    print(f"wrote {LOCK_FILE.relative_to(PROJECT_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
