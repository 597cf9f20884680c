"""Fixtures for the provider emulator's own tests: a fresh emulator per test on a free
port, in the test's event loop, and an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from emulator_helpers import CHUNKS

from provider_emulator import RunningEmulator, start_emulator


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with start_emulator(chunks=CHUNKS) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client
