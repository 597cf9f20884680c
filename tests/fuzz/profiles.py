"""How many examples the fuzz suite tries, chosen by HYPOTHESIS_PROFILE.

"ci" (the default, `make test`): a bounded, derandomized run per test; the shapes of known
bugs are pinned with @example so that every run tries them, whatever the seed.
"fuzz" (`make fuzz`): a long randomized campaign (FUZZ_EXAMPLES per test) that keeps its
failing examples in .run/hypothesis and replays them first next time.

The settings apply to this suite's tests only (`@fuzz_settings`), not to the other
Hypothesis tests of the session.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.conftest import PROJECT_ROOT

_COMMON: dict[str, Any] = dict(
    deadline=None,  # a call takes what the servers take; slowness is not what is tested
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the autouse serving check runs per test
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
PROFILES = {
    "ci": settings(max_examples=40, derandomize=True, database=None, **_COMMON),
    "fuzz": settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1500")),
        database=DirectoryBasedExampleDatabase(str(PROJECT_ROOT / ".run" / "hypothesis")),
        **_COMMON,
    ),
}
fuzz_settings = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "ci")]
