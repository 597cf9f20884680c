"""Group commit of terminal records: finishes that arrive while one is being written go out
together, as one statement and one durable commit (`service_kit.batching`).

Each caller still gets its own result, only once its record is committed: the execution as
recorded, or the error its own write raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from execution_service import repository as repo
from execution_service.model import Execution, Outcome
from service_kit import metrics
from service_kit.batching import GroupWriter
from service_kit.db import Executor

# Enough to take a full load's finishes in one or two round trips, small enough that one
# statement stays short (each row runs its triggers).
DEFAULT_MAX_BATCH = 64

Recorded = tuple[Execution, bool]  # as `repository.finish` returns it
Finish = tuple[Execution, Outcome]


class GroupCommit:
    """`repository.finish`, with concurrent calls batched into one statement."""

    def __init__(self, pool: Executor, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._pool = pool
        self._writer: GroupWriter[Finish, Recorded] = GroupWriter(
            self._finish_one,
            self._finish_many,
            max_batch=max_batch,
            # A record the batch did not write: the execution was terminal already.
            settle=self._read_back,
            # A statement may change a row only once.
            key=lambda finish: finish[0].id,
            observe=metrics.RECORD_BATCH_SIZE.observe,
        )

    @property
    def statements(self) -> int:
        return self._writer.statements

    @property
    def largest_batch(self) -> int:
        return self._writer.largest_batch

    async def finish(self, execution: Execution, outcome: Outcome) -> Recorded:
        """As `repository.finish`: the execution as recorded, and whether this outcome is
        what was recorded; raises what writing this record raised."""
        return await self._writer.write((execution, outcome))

    async def _finish_one(self, finish: Finish) -> Recorded:
        return await repo.finish(self._pool, *finish)

    async def _finish_many(self, batch: list[Finish]) -> Sequence[Recorded | None]:
        ours = await repo.finish_many(self._pool, batch)
        return [(repo.finished(e, o), True) if e.id in ours else None for e, o in batch]

    async def _read_back(self, finish: Finish) -> Recorded:
        return await repo.recorded(self._pool, finish[0].id), False
