"""The README's CancelExecution grpcurl block, run as written by bash with the real grpcurl
and curl: a slow answer started in the background is cancelled by admin."""

from __future__ import annotations

from pathlib import Path

from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.execution.test_readme_grpcurl_execution import json_documents
from tests.readme_shell import at_test_ports, project_folder, readme_block, run_block


async def test_cancel_readme_commands(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    app_vault: kv_grpc.KeyVaultServiceStub,
    pki: Path,
    tmp_path: Path,
) -> None:
    # As the execution block before it leaves things: demo's Anthropic key on the emulator.
    await app_vault.SetApiKey(
        kv.SetApiKeyRequest(
            name="workspaces/demo/apiKeys/anthropic",
            api_key="sk-ant-demo-0123456789",
            base_url=emulator.base_url,
        )
    )
    script = at_test_ports(
        readme_block("grpcurl-cancel"),
        vault=pair_vault.port,
        execution=execution.port,
        emulator=emulator.port,
    )
    code, out, err = await run_block(script, project_folder(tmp_path, pki))
    assert code == 0, err

    cancelled = [d["execution"] for d in json_documents(out) if "execution" in d]
    assert len(cancelled) == 1
    assert cancelled[0]["state"] == "EXECUTION_STATE_CANCELLED"
    assert cancelled[0]["cancelled_by"] == "spiffe://agents.internal/admin"
    assert cancelled[0]["error"]["reason"] == "CANCELLED_BY_REQUEST"
    # The background stream ended with the cancel's status.
    assert "Code: Canceled" in err and "spiffe://agents.internal/admin" in err
    sent = emulator.state.find_requests(key="sk-ant-demo-0123456789")[-1]  # the block's
    assert sent.step is not None and sent.step.chunks == 100
    assert sent.outcome == "disconnected" and sent.chunks_sent < 50
