"""`make demo` against a running pair: it works in a workspace of its own and leaves no key
behind, so the key a user keeps in `demo` (the README's walkthrough) is never touched."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from clients import KeyVaultClient
from execution_service import demo
from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator, start_emulator


async def test_demo_leaves_existing_keys_alone_and_deletes_its_own(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    vault: KeyVaultClient,
    pki: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kept = (
        await vault.set_api_key(
            "demo", "anthropic", "sk-ant-users-own-key-0123456789", base_url=emulator.base_url
        )
    ).api_key
    pair = demo.Pair(
        vault=f"localhost:{pair_vault.port}", execution=f"localhost:{execution.port}", certs=pki
    )
    workspace = demo.demo_workspace(secrets.token_hex(3))
    try:
        async with start_emulator(text="demo text") as demo_emulator:
            await demo.run_demo(pair, workspace, demo_emulator.base_url)
        out = capsys.readouterr().out

        assert re.search(r"^EXECUTION_STATE_SUCCEEDED: \d+ in / \d+ out tokens", out, re.M)
        assert f"workspace {workspace} (the demo's own)" in out
        # The user's key: same secret, same endpoint, not even rewritten.
        after = await vault.get_api_key("demo", "anthropic")
        assert (after.fingerprint, after.base_url) == (kept.fingerprint, emulator.base_url)
        assert after.update_time == kept.update_time
        # The demo's key, whose emulator has stopped, is gone.
        assert not (await vault.list_api_keys(workspace)).items
    finally:
        await vault.delete_api_key("demo", "anthropic")
