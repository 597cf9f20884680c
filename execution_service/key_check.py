"""TestApiKey: is a stored or a candidate key accepted by its provider?"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from execution_service.keys import KeySource
from execution_service.providers.call import check_key
from execution_service.providers.errors import ProviderError
from execution_service.providers.registry import get_provider
from execution_service.settings import EngineSettings
from service_kit.secret import Secret


@dataclass(frozen=True)
class KeyVerdict:
    valid: bool
    reason: str
    message: str
    seconds: float


class KeyChecker:
    def __init__(self, keys: KeySource, http: httpx.AsyncClient, settings: EngineSettings) -> None:
        self._keys = keys
        self._http = http
        # Candidate base URLs are refused by the same policy the HTTP client enforces.
        self.egress = settings.provider_egress()
        self._base_urls = {
            "openai": settings.openai_base_url,
            "anthropic": settings.anthropic_base_url,
        }

    async def check_stored(self, workspace: str, provider: str, request_id: str) -> KeyVerdict:
        # Always the key as stored now, not a cached copy the caller may just have replaced.
        self._keys.invalidate(workspace, provider)
        key, _ = await self._keys.get(workspace, provider, request_id)
        return await self._check(provider, key.secret, key.base_url)

    async def check_candidate(self, provider: str, candidate: Secret, base_url: str) -> KeyVerdict:
        return await self._check(provider, candidate, base_url or None)

    async def _check(self, provider: str, key: Secret, base_url: str | None) -> KeyVerdict:
        started = time.monotonic()
        try:
            result = await check_key(
                self._http, get_provider(provider), key, base_url or self._base_urls[provider]
            )
        except ProviderError as err:  # transient: no verdict on the key itself
            return KeyVerdict(False, str(err.reason), err.message, time.monotonic() - started)
        return KeyVerdict(
            result.valid,
            str(result.reason) if result.reason else "",
            result.message,
            time.monotonic() - started,
        )
