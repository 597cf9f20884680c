"""An endpoint that echoes the key back (whole, lower-cased, across the message length cut)
leaks no part of it: not in Execute's error, the stored execution, TestApiKey, or the logs."""

from __future__ import annotations

import logging
import secrets
import string

import pytest

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.providers.errors import MAX_MESSAGE_CHARS
from provider_emulator.server import RunningEmulator
from service_kit.redaction import MARKER, MIN_RUN
from tests.execution.support import (
    OPENAI,
    Stub,
    Workspace,
    error_info,
    get_execution,
    list_all,
    request,
    run,
)


def canary() -> str:
    alphabet = string.ascii_letters + string.digits
    return "sk-canary-" + "".join(secrets.choice(alphabet) for _ in range(32))


def leaks(text: str, key: str) -> list[str]:
    """Windows of MIN_RUN characters of the key found in text, case-insensitively."""
    folded = text.lower()
    windows = (key[i : i + MIN_RUN] for i in range(len(key) - MIN_RUN + 1))
    return [w for w in windows if w.lower() in folded]


# Where the echoed key sits relative to the 1,000-character cut of a message.
STRADDLE = "x" * (MAX_MESSAGE_CHARS - 20)

ECHOES = {
    "whole key in the JSON message": {"status": 400, "error_message": "Bad key: {api_key}"},
    "lower-cased": {"status": 400, "error_message": "no such key {api_key_lower}."},
    "across the cut": {"status": 400, "error_message": STRADDLE + "{api_key} tail"},
    "lower-cased across the cut": {"status": 422, "error_message": STRADDLE + "{api_key_lower}"},
    "plain-text body across the cut": {"status": 404, "error_body": STRADDLE + "{api_key}"},
    "in an error event after output": {
        "error_after_chunks": 2,
        "error_type": "invalid_request_error",
        "error_message": "stream failed for " + "y" * 960 + "{api_key_lower}",
    },
}


@pytest.mark.parametrize("case", list(ECHOES))
async def test_an_echoed_key_leaks_nowhere(
    case: str,
    workspace: Workspace,
    execution_stub: Stub,
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = canary()
    ws = await workspace(openai=key)
    stub = execution_stub()
    emulator.state.script(ECHOES[case], key=key)

    outcome = await run(stub, request(ws))
    assert outcome.error is not None, "the scripted failure must end the call"
    info = error_info(outcome.error)
    execution = await get_execution(stub, info.metadata["execution"])
    assert execution.state == res.EXECUTION_STATE_FAILED
    listed = [e for e in await list_all(stub, ws) if e.name == execution.name]
    texts = {
        "Execute's error": outcome.error.details() or "",
        "Execute's ErrorInfo": str(info),
        "GetExecution": str(execution),
        "ListExecutions": str(listed),
        "logs": caplog.text + "".join(str(r.__dict__) for r in caplog.records),
    }
    # The provider's words arrived, with the key replaced (so this is not a missing message).
    assert MARKER in execution.error.message
    assert len(execution.error.message) <= MAX_MESSAGE_CHARS
    for where, text in texts.items():
        assert leaks(text, key) == [], where


@pytest.mark.parametrize(
    "echo",
    [
        {"error_message": "Incorrect API key provided: {api_key}"},
        {"error_message": STRADDLE + "{api_key_lower}"},
        {"error_body": STRADDLE + "{api_key}"},
    ],
)
async def test_test_api_key_messages_leak_nothing(
    echo: dict[str, str],
    workspace: Workspace,
    execution_stub: Stub,
    app_vault: kv_grpc.KeyVaultServiceStub,
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stub = execution_stub()
    stored = canary()
    ws = await workspace(openai=stored)
    candidate = canary()
    for key in (stored, candidate):
        emulator.state.script({"status": 401, "path": "/v1/models", **echo}, key=key)

    verdicts = [
        await stub.TestApiKey(pb.TestApiKeyRequest(parent=f"workspaces/{ws}", provider=OPENAI)),
        await stub.TestApiKey(
            pb.TestApiKeyRequest(
                parent=f"workspaces/{ws}", provider=OPENAI, candidate_api_key=candidate
            )
        ),
    ]
    for verdict, key in zip(verdicts, (stored, candidate), strict=True):
        assert (verdict.valid, verdict.reason) == (False, "PROVIDER_AUTH_FAILED")
        assert leaks(verdict.message, key) == []
        assert MARKER in verdict.message
        assert len(verdict.message) <= MAX_MESSAGE_CHARS
    logs = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert leaks(logs, stored) == [] and leaks(logs, candidate) == []
