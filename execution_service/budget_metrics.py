"""The per-budget gauges, refreshed from the database by the sweeper (every process reads the
same rows). Labels are bounded: only the MAX_BUDGET_SERIES most used workspace budgets get a
series; the others are counted in `execution_budgets_not_shown`."""

from __future__ import annotations

import datetime as dt
import os

from execution_service import budget_repository as repo
from service_kit import metrics
from service_kit.db import Executor

MAX_BUDGET_SERIES = 50


# The budgets that have a series now, so that one no longer shown loses it.
_shown: set[str] = set()


async def refresh(db: Executor, *, limit: int = MAX_BUDGET_SERIES) -> None:
    shown, total = await repo.most_used(db, limit, now=dt.datetime.now(dt.UTC))
    names = {budget.name for budget in shown}
    # prometheus_client cannot remove a series in multiprocess mode (workers > 1): there a
    # budget that drops out keeps its last values until the service restarts.
    if not os.environ.get(metrics.MULTIPROCESS_ENV):
        for name in _shown - names:
            metrics.BUDGET_SPENT.remove(name)
            metrics.BUDGET_REMAINING.remove(name)
    _shown.clear()
    _shown.update(names)
    for budget in shown:
        metrics.BUDGET_SPENT.labels(budget.name).set(budget.current.spent_nanos)
        metrics.BUDGET_REMAINING.labels(budget.name).set(budget.remaining_nanos or 0)
    metrics.BUDGETS_NOT_SHOWN.set(total - len(shown))
