"""What makes this process's copies stale, heard from whichever replica changed it.

A trigger (migration 009) NOTIFYs `execution_changes` when a budget is created (executions
of its workspace must be admitted before their provider is called: `early_start`) and when
an agent is updated or deleted (its cached copy is dropped, so the next run plans from the
agent as it is). While not listening (starting, or the connection lost), nothing is known
to be without a budget, and on listening again every cached agent is dropped: changes may
have been missed meanwhile.
"""

from __future__ import annotations

import json
import logging

from execution_service.agent_store import AgentStore
from execution_service.early_start import UnbudgetedScopes
from service_kit.listen import Listener

log = logging.getLogger(__name__)

CHANNEL = "execution_changes"


class ChangeNotices:
    def __init__(self, database_url: str, scopes: UnbudgetedScopes, agents: AgentStore) -> None:
        self._scopes = scopes
        self._agents = agents
        self._listener = Listener(
            "change notices",
            database_url,
            CHANNEL,
            self._on_notification,
            on_listening=self._on_listening,
            on_lost=lambda: scopes.hear(False),
        )

    def start(self) -> None:
        self._listener.start()

    async def wait_live(self, timeout: float) -> bool:
        return await self._listener.wait_live(timeout)

    async def stop(self) -> None:
        await self._listener.stop()
        self._scopes.hear(False)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        try:
            notice = json.loads(str(payload))
        except ValueError:
            notice = None
        match notice:
            case ["budget", str(workspace)]:
                self._scopes.forget_workspace(workspace)
            case ["agent", str(workspace), str(agent_id)]:
                self._agents.forget(workspace, agent_id)
            case _:
                log.warning("unreadable change notice ignored")

    async def _on_listening(self, conn: object) -> None:
        self._agents.forget_all()
        self._scopes.hear(True)
