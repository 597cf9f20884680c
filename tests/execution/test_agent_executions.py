"""Running agents by name, end to end: real mTLS gRPC, the key vault, PostgreSQL and the provider
emulator's structured-output modes. Input checked before anything happens; output parsed,
validated and recorded; every way the output can fail."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    ANTHROPIC,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    error_details,
    error_info,
    expect_error,
    get_execution,
    list_all,
    openai_key,
    reveal_count,
    run,
)
from tests.execution.test_agents import INPUT_SCHEMA, create, route, struct

# Strict-compatible for OpenAI and within Anthropic's subset (no maxItems, no bounds).
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "status": {"type": "string", "enum": ["open", "shipped", "refunded"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "price": {"type": "number"}},
                "required": ["sku", "price"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["answer", "status", "items"],
    "additionalProperties": False,
}
INPUT = {"question": "Where is my order?", "customer": {"email": "ana@example.com"}}


@pytest.fixture
def admin_vault(
    pair_vault: RunningKeyVault, tls_for: Callable[[str], TlsFiles]
) -> kv_grpc.KeyVaultServiceStub:
    return kv_grpc.KeyVaultServiceStub(secure_channel(pair_vault.port, tls_for("admin")))


def by_agent(ws: str, agent_id: str = "support-bot", **fields: Any) -> pb.ExecuteRequest:
    if "input" not in fields and "input_json" not in fields:
        fields["input"] = struct(INPUT)
    return pb.ExecuteRequest(
        parent=f"workspaces/{ws}", agent=f"workspaces/{ws}/agents/{agent_id}", **fields
    )


async def make_agent(
    stub: Any, ws: str, provider: int = OPENAI, model: str = "gpt-4o-mini", **config: Any
) -> res.Agent:
    return await create(
        stub, ws, routes=[route(provider, model, **config)], output_schema=struct(OUTPUT_SCHEMA)
    )


def document(message: Any) -> dict[str, Any]:
    return json.loads(json_format.MessageToJson(message))


# --- both providers, through the vault ------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "mode"),
    [
        (OPENAI, "gpt-4o-mini", "response_format"),
        (ANTHROPIC, "claude-sonnet-4-5", "output_config"),
        (ANTHROPIC, "claude-3-5-sonnet-20241022", "tools"),
    ],
)
async def test_an_agent_runs_with_structured_output(
    workspace: Workspace,
    execution_stub: Stub,
    emulator: RunningEmulator,
    provider: int,
    model: str,
    mode: str,
) -> None:
    key = openai_key() if provider == OPENAI else anthropic_key()
    ws = await workspace(**{"openai" if provider == OPENAI else "anthropic": key})
    stub = execution_stub()
    agent = await make_agent(stub, ws, provider, model, max_tokens=512)
    emulator.state.script({"chunk_delay_ms": 10}, key=key)  # so the pieces arrive apart

    outcome = await run(stub, by_agent(ws))

    done = outcome.completed
    assert done.state == res.EXECUTION_STATE_SUCCEEDED
    assert done.agent == agent.name and done.agent_etag == agent.etag
    assert done.agent_id == "support-bot" and done.model == model
    assert done.output_valid and done.HasField("output_valid")
    parsed = json.loads(outcome.text)  # the streamed deltas join to the JSON
    assert len(outcome.deltas) > 1
    assert document(done.output) == parsed and done.output_text == outcome.text
    assert set(parsed) == {"answer", "status", "items"}
    assert outcome.started.agent == agent.name and not outcome.started.HasField("output")

    stored = await get_execution(stub, done.name)
    assert document(stored.output) == parsed and stored.output_valid
    assert stored.agent == agent.name and stored.agent_etag == agent.etag

    sent = emulator.state.find_requests(key=key)[-1].body
    user_json = json.dumps(INPUT, sort_keys=True, separators=(",", ":"))
    if provider == OPENAI:
        assert sent["messages"] == [
            {"role": "system", "content": agent.instructions},
            {"role": "user", "content": user_json},
        ]
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["strict"] is True
        assert sent["response_format"]["json_schema"]["schema"] == OUTPUT_SCHEMA
    else:
        assert sent["system"] == agent.instructions
        assert sent["messages"] == [{"role": "user", "content": user_json}]
        assert mode in sent
        assert ("output_config" in sent) == (mode == "output_config")


async def test_input_json_and_an_agent_without_input_schema(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    await create(stub, ws, "free", input_schema=None, output_schema=None)
    text = '{"n": 12345678901234567890, "b": [1, 2.5]}'
    outcome = await run(stub, by_agent(ws, "free", input_json=text))
    done = outcome.completed
    assert done.state == res.EXECUTION_STATE_SUCCEEDED
    assert not done.HasField("output_valid") and not done.HasField("output")
    sent = emulator.state.find_requests(key=key)[-1].body
    assert sent["messages"][-1]["content"] == '{"b":[1,2.5],"n":12345678901234567890}'
    assert "response_format" not in sent

    err = (await run(stub, by_agent(ws, "free", input_json="[1, 2]"))).error
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err)[1] == ["input"]


# --- input checked first ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"input": struct({"customer": {"email": "not an email"}, "question": 7})},
            ["input/customer/email", "input/question"],
        ),
        ({"input": struct({"customer": {}})}, ["input", "input/customer"]),
        ({"input_json": '{"customer": '}, ["input_json"]),
        ({"input_json": "NaN"}, ["input_json"]),
        ({}, ["input"]),
        (
            {"model": "gpt-4o", "provider": OPENAI, "messages": [res.Message(role=1, content="x")]},
            ["provider", "model", "messages"],
        ),
    ],
)
async def test_bad_input_is_refused_before_anything_happens(
    workspace: Workspace,
    execution_stub: Stub,
    admin_vault: kv_grpc.KeyVaultServiceStub,
    fields: dict[str, Any],
    expected: list[str],
) -> None:
    ws, stub = await workspace(openai=openai_key()), execution_stub()
    await make_agent(stub, ws)
    req = by_agent(ws, **fields)
    if not fields:
        req.ClearField("input")
    err = await expect_error(_collect(stub, req), grpc.StatusCode.INVALID_ARGUMENT)
    assert sorted(error_details(err)[1]) == sorted(expected)
    assert await list_all(stub, ws) == []
    assert await reveal_count(admin_vault, ws) == 0


async def _collect(stub: Any, req: pb.ExecuteRequest) -> list[pb.ExecuteResponse]:
    return [event async for event in stub.Execute(req)]


async def test_missing_deleted_and_foreign_agents_are_not_found(
    workspace: Workspace, execution_stub: Stub
) -> None:
    mine, theirs = await workspace(openai=openai_key()), await workspace(openai=openai_key())
    stub = execution_stub()
    await make_agent(stub, theirs)
    err = await expect_error(_collect(stub, by_agent(mine)), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "AGENT_NOT_FOUND"
    assert error_info(err).metadata["agent"] == f"workspaces/{mine}/agents/support-bot"

    err = await expect_error(
        _collect(
            stub,
            pb.ExecuteRequest(
                parent=f"workspaces/{mine}", agent=by_agent(theirs).agent, input=struct(INPUT)
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_details(err)[1] == ["agent"]

    assert (await run(stub, by_agent(theirs))).completed.output_valid
    await stub.DeleteAgent(pb.DeleteAgentRequest(name=f"workspaces/{theirs}/agents/support-bot"))
    err = await expect_error(_collect(stub, by_agent(theirs)), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "AGENT_NOT_FOUND"
    assert len(await list_all(stub, theirs)) == 1 and await list_all(stub, mine) == []


async def test_each_execution_records_the_agent_version_it_ran(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    first = await make_agent(stub, ws)
    before = (await run(stub, by_agent(ws))).completed
    updated = (
        await stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=first.name, instructions="Answer tersely."),
                update_mask=FieldMask(paths=["instructions"]),
            )
        )
    ).agent
    after = (await run(stub, by_agent(ws))).completed
    assert before.agent_etag == first.etag and after.agent_etag == updated.etag
    assert before.agent_etag != after.agent_etag
    sent = emulator.state.find_requests(key=key)[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Answer tersely."}


# --- output failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "step", "reason", "pointers"),
    [
        (
            OPENAI,
            "gpt-4o-mini",
            {"output_fault": "invalid_json"},
            "OUTPUT_SCHEMA_VIOLATION",
            ["output"],
        ),
        (
            ANTHROPIC,
            "claude-3-5-sonnet-20241022",
            {"output_fault": "invalid_json"},
            "OUTPUT_SCHEMA_VIOLATION",
            ["output"],
        ),
        (
            OPENAI,
            "gpt-4o-mini",
            {"output_fault": "schema_violation"},
            "OUTPUT_SCHEMA_VIOLATION",
            None,
        ),
        (
            ANTHROPIC,
            "claude-sonnet-4-5",
            {"output_fault": "schema_violation"},
            "OUTPUT_SCHEMA_VIOLATION",
            None,
        ),
        (
            OPENAI,
            "gpt-4o-mini",
            {"output_fault": "refusal", "text": "I can't help with that."},
            "OUTPUT_REFUSED",
            [],
        ),
        (ANTHROPIC, "claude-sonnet-4-5", {"output_fault": "refusal"}, "OUTPUT_REFUSED", []),
    ],
)
async def test_output_failures_fail_the_execution(
    workspace: Workspace,
    execution_stub: Stub,
    emulator: RunningEmulator,
    provider: int,
    model: str,
    step: dict[str, Any],
    reason: str,
    pointers: list[str] | None,
) -> None:
    key = openai_key() if provider == OPENAI else anthropic_key()
    ws = await workspace(**{"openai" if provider == OPENAI else "anthropic": key})
    stub = execution_stub()
    await make_agent(stub, ws, provider, model)
    emulator.state.script(step, key=key)

    outcome = await run(stub, by_agent(ws))

    err = outcome.error
    assert err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err)
    assert info.reason == reason
    name = outcome.started.name
    assert info.metadata["execution"] == name
    stored = await get_execution(stub, name)
    assert stored.state == res.EXECUTION_STATE_FAILED and stored.error.reason == reason
    assert stored.HasField("output_valid") and not stored.output_valid
    assert stored.output_text == outcome.text  # the raw text is kept
    found = [v.pointer for v in stored.error.violations]
    if pointers is None:  # a schema violation: somewhere inside the output, named in the message
        assert found and all(p.startswith("output/") or p == "output" for p in found)
        assert found[0] in err.details()
        assert stored.HasField("output")  # valid JSON: kept parsed
        assert document(stored.output) == json.loads(outcome.text)
    else:
        assert found == pointers
        assert not stored.HasField("output")
    if reason == "OUTPUT_REFUSED" and "text" in step:
        assert step["text"] in stored.error.message and step["text"] in err.details()


@pytest.mark.parametrize(
    ("provider", "model"), [(OPENAI, "gpt-4o-mini"), (ANTHROPIC, "claude-3-5-sonnet-20241022")]
)
async def test_a_cut_at_max_tokens_inside_the_json_is_a_schema_violation(
    workspace: Workspace, execution_stub: Stub, provider: int, model: str
) -> None:
    key = openai_key() if provider == OPENAI else anthropic_key()
    ws = await workspace(**{"openai" if provider == OPENAI else "anthropic": key})
    stub = execution_stub()
    await make_agent(stub, ws, provider, model, max_tokens=5)
    outcome = await run(stub, by_agent(ws))
    assert outcome.error is not None
    assert error_info(outcome.error).reason == "OUTPUT_SCHEMA_VIOLATION"
    stored = await get_execution(stub, outcome.started.name)
    assert stored.finish_reason in ("length", "max_tokens")
    assert [v.pointer for v in stored.error.violations] == ["output"]
    assert "token limit" in stored.error.violations[0].description
    assert stored.output_text == outcome.text and outcome.text
    assert stored.usage.output_tokens > 0


async def test_a_provider_failure_mid_json_stays_a_provider_failure(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    await make_agent(stub, ws)
    emulator.state.script({"cut_after_chunks": 4}, key=key)
    outcome = await run(stub, by_agent(ws))
    assert outcome.error is not None
    assert error_info(outcome.error).reason.startswith("PROVIDER_")
    stored = await get_execution(stub, outcome.started.name)
    assert stored.state == res.EXECUTION_STATE_FAILED
    assert not stored.HasField("output_valid") and not stored.error.violations


# --- replay and statistics --------------------------------------------------------------------


async def test_a_replay_returns_the_stored_parsed_output(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    await make_agent(stub, ws)
    request_id = f"req-{uuid.uuid4().hex}"
    first = (await run(stub, by_agent(ws, request_id=request_id))).completed
    calls = len(emulator.state.find_requests(key=key))
    again = await run(stub, by_agent(ws, request_id=request_id))
    assert again.completed == first
    assert document(again.completed.output) == json.loads(again.text)
    assert len(emulator.state.find_requests(key=key)) == calls


async def test_stats_count_output_failures_apart(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    await make_agent(stub, ws)
    emulator.state.script(
        {"output_fault": "schema_violation"},
        {"output_fault": "refusal"},
        {"status": 400, "error_message": "bad request"},
        key=key,
    )
    for _ in range(4):
        await run(stub, by_agent(ws))
    stats = (
        await stub.GetAgentStats(
            pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id="support-bot")
        )
    ).stats
    assert stats.total_count == 4 and stats.succeeded_count == 1
    assert stats.failed_count == 3 and stats.output_invalid_count == 2


# --- ad hoc output schema ---------------------------------------------------------------------


async def test_an_ad_hoc_execute_may_ask_for_structured_output(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    req = pb.ExecuteRequest(
        parent=f"workspaces/{ws}",
        agent_id="adhoc",
        provider=OPENAI,
        model="gpt-4o-mini",
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="Where is order 7?")],
        output_schema=struct(OUTPUT_SCHEMA),
    )
    done = (await run(stub, req)).completed
    assert done.output_valid and document(done.output)["status"] in ("open", "shipped", "refunded")
    assert done.agent == "" and done.agent_etag == ""
    sent = emulator.state.find_requests(key=key)[-1].body
    assert sent["response_format"]["json_schema"]["schema"] == OUTPUT_SCHEMA

    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    req.output_schema.CopyFrom(struct(loose))
    err = await expect_error(_collect(stub, req), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_details(err)[1] and all(
        f.startswith("output_schema") for f in error_details(err)[1]
    )

    req.ClearField("output_schema")
    req.input_json = "{}"
    err = await expect_error(_collect(stub, req), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_details(err)[1] == ["input_json"]


async def test_many_long_input_violations_still_fit_in_the_status(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(openai=openai_key()), execution_stub()
    await create(
        stub,
        ws,
        "strict",
        input_schema=struct({"type": "object", "additionalProperties": {"type": "integer"}}),
        output_schema=None,
    )
    document = {f"{i:03d}" + "k" * 2000: "not a number " * 50 for i in range(80)}
    req = by_agent(ws, "strict", input_json=json.dumps(document))
    err = await expect_error(_collect(stub, req), grpc.StatusCode.INVALID_ARGUMENT)
    fields = error_details(err)[1]
    assert len(fields) == 7 and all(f.startswith("input/") for f in fields[:6])
    assert fields[-1] == "input"  # "and 74 more violations not listed"
    assert max(len(f) for f in fields) <= 200
    assert await list_all(stub, ws) == []


async def test_a_nul_escape_in_the_output_is_recorded(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    await make_agent(stub, ws)
    text = '{"answer": "a\\u0000b", "status": "open", "items": []}'
    emulator.state.script({"text": text}, key=key)
    outcome = await run(stub, by_agent(ws))
    done = outcome.completed
    assert done.output_valid and outcome.text == text
    stored = await get_execution(stub, done.name)
    assert stored.output_text == text and stored.output["answer"] == "a\ufffdb"


async def test_every_process_runs_the_agent_as_it_is_now(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    """Two processes on one database: one keeps the agent in memory after running it, the
    other updates and deletes it; the first sees each change at its next execution."""
    url = await make_database("ex")
    runner_service = await start_execution_service(database_url=url)
    editor_service = await start_execution_service(database_url=url)
    runner, editor = (
        execution_stub(port=runner_service.port),
        execution_stub(port=editor_service.port),
    )
    key = openai_key()
    ws = await workspace(openai=key)
    first = await make_agent(editor, ws)
    assert (await run(runner, by_agent(ws))).completed.agent_etag == first.etag  # now cached

    changed = (
        await editor.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=first.name, instructions="Answer tersely."),
                update_mask=FieldMask(paths=["instructions"]),
            )
        )
    ).agent
    done = (await run(runner, by_agent(ws))).completed
    assert done.agent_etag == changed.etag
    sent = emulator.state.find_requests(key=key)[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Answer tersely."}

    async def set_input_schema(schema: dict[str, Any]) -> None:
        await editor.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=first.name, input_schema=struct(schema)),
                update_mask=FieldMask(paths=["input_schema"]),
            )
        )

    stricter = {**INPUT_SCHEMA, "required": ["customer", "question", "order_id"]}
    await set_input_schema(stricter)
    err = await expect_error(_collect(runner, by_agent(ws)), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_details(err)[1] == ["input"]
    await set_input_schema(INPUT_SCHEMA)  # relaxed again: the copy in memory is stricter
    assert (await run(runner, by_agent(ws))).completed.output_valid
    await set_input_schema(stricter)
    err = await expect_error(_collect(runner, by_agent(ws)), grpc.StatusCode.INVALID_ARGUMENT)

    await editor.DeleteAgent(pb.DeleteAgentRequest(name=first.name))
    err = await expect_error(_collect(runner, by_agent(ws)), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "AGENT_NOT_FOUND"
    assert len(await list_all(runner, ws)) == 3  # the refused runs recorded nothing


async def test_a_refusal_fails_a_free_text_execution_too(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    emulator.state.script({"output_fault": "refusal", "text": "Not this one."}, key=key)
    req = pb.ExecuteRequest(
        parent=f"workspaces/{ws}",
        agent_id="adhoc",
        provider=OPENAI,
        model="gpt-4o-mini",
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="Tell me a secret.")],
    )
    outcome = await run(stub, req)
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(outcome.error).reason == "OUTPUT_REFUSED"
    stored = await get_execution(stub, outcome.started.name)
    assert stored.error.reason == "OUTPUT_REFUSED" and "Not this one." in stored.error.message
    assert not stored.HasField("output_valid")


async def test_a_replay_answers_even_after_the_agent_changed_or_went(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub = await workspace(openai=key), execution_stub()
    agent = await make_agent(stub, ws)
    request_id = f"req-{uuid.uuid4().hex}"
    first = (await run(stub, by_agent(ws, request_id=request_id))).completed
    stricter = {**INPUT_SCHEMA, "required": ["customer", "question", "order_id"]}
    await stub.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=res.Agent(name=agent.name, input_schema=struct(stricter)),
            update_mask=FieldMask(paths=["input_schema"]),
        )
    )
    assert (await run(stub, by_agent(ws, request_id=request_id))).completed == first
    await stub.DeleteAgent(pb.DeleteAgentRequest(name=agent.name))
    assert (await run(stub, by_agent(ws, request_id=request_id))).completed == first
    err = await expect_error(_collect(stub, by_agent(ws)), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "AGENT_NOT_FOUND"
