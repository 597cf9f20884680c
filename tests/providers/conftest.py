"""Fixtures for the provider layer tests; the helpers live in provider_testkit.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from provider_testkit import ProviderServer, RecordingSleep


@pytest.fixture
async def provider_server() -> AsyncIterator[ProviderServer]:
    server = ProviderServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        yield client


@pytest.fixture
def recording_sleep() -> RecordingSleep:
    return RecordingSleep()
