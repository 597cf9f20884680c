"""Structured logs across the pair: the request id of an Execute call reaches the vault's log
and audit record, each execution ends with one log line, and a canary key shows up in
neither service's /metrics nor in any log record."""

from __future__ import annotations

import uuid

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from tests.execution.support import ANTHROPIC, OPENAI, openai_key, request, run
from tests.ops.conftest import LogCapture, MeteredPair, scrape

APP = "spiffe://agents.internal/app"
EXECUTION = "spiffe://agents.internal/execution"
PROMPT = "Summarise the quarterly numbers for the board"


def workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


async def test_the_request_id_follows_an_execution_into_the_vault(
    metered_pair: MeteredPair,
) -> None:
    pair, ws, key = metered_pair, workspace(), openai_key()
    await pair.store_key(ws, "openai", key)
    rid = f"trace-{uuid.uuid4().hex}"

    with LogCapture() as logs:
        outcome = await run(
            pair.execution_stub(),
            request(ws, prompt=PROMPT),
            metadata=(("x-request-id", rid),),
        )
    done = outcome.completed

    reveals = [r for r in logs.records("key revealed") if r["key"].startswith(f"workspaces/{ws}/")]
    assert len(reveals) == 1
    assert reveals[0]["name"] == "keyvault_service.vault"
    assert (reveals[0]["request_id"], reveals[0]["caller"]) == (rid, EXECUTION)
    audit = await pair.vault_stub("admin").ListAuditEvents(
        kv.ListAuditEventsRequest(parent=f"workspaces/{ws}")
    )
    revealed = [e for e in audit.audit_events if e.action == kv_res.AUDIT_ACTION_REVEAL]
    assert [e.request_id for e in revealed] == [rid]

    finished = [r for r in logs.records("execution finished") if r["execution"] == done.name]
    assert len(finished) == 1
    line = finished[0]
    assert line["name"] == "execution_service.telemetry"
    assert line["levelname"] == "INFO"
    assert (line["request_id"], line["caller"]) == (rid, APP)
    assert (line["state"], line["reason"], line["attempts"]) == ("SUCCEEDED", None, 1)
    assert (line["provider"], line["model"], line["agent_id"]) == (
        "openai",
        "gpt-4o-mini",
        "agent-1",
    )
    assert line["input_tokens"] == done.usage.input_tokens > 0
    assert line["output_tokens"] == done.usage.output_tokens > 0
    assert line["cost_nanos"] == done.cost_nanos
    assert line["latency_ms"] >= line["ttft_ms"] >= 0
    # No content: neither the prompt nor the output is logged.
    assert done.output_text and done.output_text not in logs.text
    assert PROMPT not in logs.text


CANARY = "sk-proj-CANARY-4e1b7d09a3c2f6e8b5d1a7c3e9f0OPS"


def _forms(secret: str) -> list[str]:
    """The canary and encodings a careless label or log line might use."""
    data = secret.encode()
    return [secret, data.hex(), secret[8:], repr(data)[2:-1]]


async def test_a_canary_key_reaches_no_metrics_and_no_logs(metered_pair: MeteredPair) -> None:
    pair = metered_pair
    ws, failing_ws = workspace(), workspace()
    stub = pair.execution_stub()
    with LogCapture() as logs:
        await pair.store_key(ws, "openai", CANARY)
        await pair.store_key(failing_ws, "anthropic", CANARY)
        succeeded = await run(stub, request(ws))
        assert succeeded.completed.state == res.EXECUTION_STATE_SUCCEEDED
        # Failures with the canary in hand: refused by the provider, retried until exhausted.
        pair.emulator.state.script(
            {"status": 401, "error_message": f"Incorrect API key provided: {CANARY}"}, key=CANARY
        )
        refused = await run(stub, request(failing_ws, ANTHROPIC, "claude-3-5-sonnet-20241022"))
        assert refused.error is not None
        pair.emulator.state.script({"status": 500}, {"status": 500}, {"status": 500}, key=CANARY)
        exhausted = await run(stub, request(ws))
        assert exhausted.error is not None
        checked = await stub.TestApiKey(
            pb.TestApiKeyRequest(parent=f"workspaces/{ws}", provider=OPENAI)
        )
        assert checked.valid

    vault_text = (await scrape(pair.vault_metrics_port)).text
    execution_text = (await scrape(pair.execution_metrics_port)).text
    # The scrapes and the capture saw the scenario.
    assert 'keyvault_reveals_total{outcome="revealed"}' in vault_text
    assert 'reason="PROVIDER_SERVER_ERROR"' in execution_text
    assert 'reason="PROVIDER_AUTH_FAILED",state="FAILED"' in execution_text
    assert logs.records("execution finished") and logs.records("key revealed")
    for text in (vault_text, execution_text, logs.text):
        for form in _forms(CANARY):
            assert form not in text
