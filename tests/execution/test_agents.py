"""Agents as resources over real mTLS gRPC on PostgreSQL: the standard methods, update masks,
etags under concurrency, workspace isolation, save-time schema checks and who may call what."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service import agent_repository
from execution_service.agent_store import get_agent
from execution_service.app import RunningExecution
from tests.execution.support import (
    ANTHROPIC,
    OPENAI,
    Stub,
    Workspace,
    error_details,
    error_info,
    expect_error,
)

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {"email": {"type": "string", "format": "email"}},
            "required": ["email"],
        },
        "question": {"type": "string", "maxLength": 2000},
    },
    "required": ["customer", "question"],
}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "price": {"type": "number"}},
                "required": ["sku", "price"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["answer", "items"],
    "additionalProperties": False,
}


def struct(document: dict[str, Any]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(document)
    return value


def route(provider: int = OPENAI, model: str = "gpt-4o-mini", **config: Any) -> res.Route:
    return res.Route(
        provider=provider,  # type: ignore[arg-type]
        model=model,
        generation_config=res.GenerationConfig(**config),
    )


def agent(**changes: Any) -> res.Agent:
    fields: dict[str, Any] = {
        "display_name": "Support bot",
        "description": "Answers order questions",
        "instructions": "You answer questions about orders. Reply in JSON.",
        "routes": [route(max_tokens=256, temperature=0.2)],
        "input_schema": struct(INPUT_SCHEMA),
        "output_schema": struct(OUTPUT_SCHEMA),
        "labels": {"team": "support"},
    }
    fields.update(changes)
    return res.Agent(**{k: v for k, v in fields.items() if v is not None})


async def create(stub: Any, ws: str, agent_id: str = "support-bot", **changes: Any) -> res.Agent:
    reply = await stub.CreateAgent(
        pb.CreateAgentRequest(parent=f"workspaces/{ws}", agent_id=agent_id, agent=agent(**changes))
    )
    return reply.agent


def doc(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    return error_details(err)[1]


# --- standard methods -----------------------------------------------------------------------


async def test_create_get_list_update_delete(workspace: Workspace, execution_stub: Stub) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    assert created.name == f"workspaces/{ws}/agents/support-bot"
    assert created.display_name == "Support bot"
    assert created.routes[0].provider == OPENAI and created.routes[0].model == "gpt-4o-mini"
    assert created.routes[0].generation_config.max_tokens == 256
    assert not created.routes[0].generation_config.HasField("top_p")
    assert doc(created.input_schema) == doc(struct(INPUT_SCHEMA))
    assert doc(created.output_schema) == doc(struct(OUTPUT_SCHEMA))
    assert dict(created.labels) == {"team": "support"}
    assert created.etag and created.create_time == created.update_time

    got = (await stub.GetAgent(pb.GetAgentRequest(name=created.name))).agent
    assert got == created

    listed = await stub.ListAgents(pb.ListAgentsRequest(parent=f"workspaces/{ws}"))
    assert list(listed.agents) == [created] and listed.next_page_token == ""

    updated = (
        await stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=created.name, description="Answers everything"),
                update_mask=FieldMask(paths=["description"]),
            )
        )
    ).agent
    assert updated.description == "Answers everything"
    assert updated.instructions == created.instructions  # not in the mask: unchanged
    assert updated.etag != created.etag
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()
    assert updated.create_time == created.create_time

    await stub.DeleteAgent(pb.DeleteAgentRequest(name=created.name))
    err = await expect_error(
        stub.GetAgent(pb.GetAgentRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )
    assert error_info(err).reason == "AGENT_NOT_FOUND"
    err = await expect_error(
        stub.DeleteAgent(pb.DeleteAgentRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )
    assert error_info(err).reason == "AGENT_NOT_FOUND"


async def test_an_agent_without_schemas_is_free_text(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws, input_schema=None, output_schema=None, labels={})
    assert not created.HasField("input_schema") and not created.HasField("output_schema")


async def test_a_taken_id_is_already_exists(workspace: Workspace, execution_stub: Stub) -> None:
    ws, stub = await workspace(), execution_stub()
    first = await create(stub, ws)
    err = await expect_error(
        create(stub, ws, display_name="Another"), grpc.StatusCode.ALREADY_EXISTS
    )
    info = error_info(err)
    assert info.reason == "AGENT_ALREADY_EXISTS" and info.metadata["agent"] == first.name
    got = (await stub.GetAgent(pb.GetAgentRequest(name=first.name))).agent
    assert got.display_name == "Support bot"


async def test_another_workspaces_agent_is_not_found(
    workspace: Workspace, execution_stub: Stub
) -> None:
    mine, theirs, stub = await workspace(), await workspace(), execution_stub()
    created = await create(stub, theirs)
    name = f"workspaces/{mine}/agents/support-bot"
    calls = [
        stub.GetAgent(pb.GetAgentRequest(name=name)),
        stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=name, etag=created.etag, description="mine now"),
                update_mask=FieldMask(paths=["description"]),
            )
        ),
        stub.DeleteAgent(pb.DeleteAgentRequest(name=name, etag=created.etag)),
        stub.DeleteAgent(pb.DeleteAgentRequest(name=name)),
    ]
    for call in calls:
        err = await expect_error(call, grpc.StatusCode.NOT_FOUND)
        assert error_info(err).reason == "AGENT_NOT_FOUND"
    listed = await stub.ListAgents(pb.ListAgentsRequest(parent=f"workspaces/{mine}"))
    assert list(listed.agents) == []
    still = (await stub.GetAgent(pb.GetAgentRequest(name=created.name))).agent
    assert still == created


async def test_list_pages_by_agent_id(workspace: Workspace, execution_stub: Stub) -> None:
    ws, stub = await workspace(), execution_stub()
    ids = ["b-2", "A.1", "a_3", "c", "B-1"]
    for agent_id in ids:
        await create(stub, ws, agent_id=agent_id)
    parent = f"workspaces/{ws}"
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListAgents(
            pb.ListAgentsRequest(parent=parent, page_size=2, page_token=token)
        )
        pages += 1
        assert len(page.agents) <= 2
        seen += [a.name.rsplit("/", 1)[1] for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids)  # byte order: upper case first
    assert pages == 3

    first = await stub.ListAgents(pb.ListAgentsRequest(parent=parent, page_size=2))
    other = f"workspaces/{await workspace()}"
    for bad in (
        pb.ListAgentsRequest(parent=other, page_token=first.next_page_token),
        pb.ListAgentsRequest(parent=parent, page_token="garbage"),
        pb.ListAgentsRequest(parent=parent, page_size=-1),
        pb.ListAgentsRequest(parent="workspaces/"),
    ):
        err = await expect_error(stub.ListAgents(bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert len(violations(err)) == 1


async def test_a_page_of_large_agents_stops_early_and_the_next_page_goes_on(
    workspace: Workspace, execution_stub: Stub
) -> None:
    """Large agents fill a page before its size: the response stays far below gRPC's
    message limit, and paging still reaches every agent once."""
    ws, stub = await workspace(), execution_stub()
    ids = [f"big-{i:02d}" for i in range(15)]
    for agent_id in ids:
        await create(stub, ws, agent_id=agent_id, instructions="x" * 95_000)
    parent = f"workspaces/{ws}"
    first = await stub.ListAgents(pb.ListAgentsRequest(parent=parent, page_size=50))
    assert 1 <= len(first.agents) < len(ids) and first.next_page_token
    assert first.ByteSize() < 1_500_000
    seen, token = [], ""
    while True:
        page = await stub.ListAgents(pb.ListAgentsRequest(parent=parent, page_token=token))
        seen += [a.name.rsplit("/", 1)[1] for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids


# --- update masks ---------------------------------------------------------------------------


async def test_an_empty_mask_or_star_replaces_every_updatable_field(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    for paths in ([], ["*"]):
        replacement = res.Agent(
            name=created.name,
            instructions="Be brief.",
            routes=[route(ANTHROPIC, "claude-3-5-haiku-20241022")],
        )
        updated = (
            await stub.UpdateAgent(
                pb.UpdateAgentRequest(agent=replacement, update_mask=FieldMask(paths=paths))
            )
        ).agent
        assert updated.instructions == "Be brief."
        assert updated.routes[0].provider == ANTHROPIC
        assert updated.display_name == "" and updated.description == ""
        assert not updated.HasField("input_schema") and not updated.HasField("output_schema")
        assert dict(updated.labels) == {}
        assert updated.name == created.name and updated.create_time == created.create_time


async def test_fields_outside_the_mask_are_neither_changed_nor_checked(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    # The message's routes are invalid (none) and its labels empty: the mask says labels only.
    updated = (
        await stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=created.name, labels={"team": "sales", "tier": "1"}),
                update_mask=FieldMask(paths=["labels"]),
            )
        )
    ).agent
    assert dict(updated.labels) == {"team": "sales", "tier": "1"}
    assert list(updated.routes) == list(created.routes)
    assert doc(updated.output_schema) == doc(created.output_schema)


@pytest.mark.parametrize(
    ("paths", "fields"),
    [
        (["colour"], ["update_mask.paths[0]"]),
        (["description", "name"], ["update_mask.paths[1]"]),
        (["etag"], ["update_mask.paths[0]"]),
        (["*", "labels"], ["update_mask.paths[0]"]),
    ],
)
async def test_unknown_or_read_only_mask_paths_are_invalid(
    paths: list[str], fields: list[str], workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    err = await expect_error(
        stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=created.name, description="x"),
                update_mask=FieldMask(paths=paths),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == fields
    got = (await stub.GetAgent(pb.GetAgentRequest(name=created.name))).agent
    assert got == created


# --- etags ----------------------------------------------------------------------------------


async def test_a_stale_etag_is_aborted(workspace: Workspace, execution_stub: Stub) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    mask = FieldMask(paths=["description"])
    first = await stub.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=res.Agent(name=created.name, etag=created.etag, description="v2"),
            update_mask=mask,
        )
    )
    err = await expect_error(
        stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=created.name, etag=created.etag, description="v3"),
                update_mask=mask,
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    err = await expect_error(
        stub.DeleteAgent(pb.DeleteAgentRequest(name=created.name, etag=created.etag)),
        grpc.StatusCode.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    got = (await stub.GetAgent(pb.GetAgentRequest(name=created.name))).agent
    assert got.description == "v2" and got.etag == first.agent.etag
    await stub.DeleteAgent(pb.DeleteAgentRequest(name=created.name, etag=got.etag))
    await expect_error(
        stub.GetAgent(pb.GetAgentRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )


async def test_concurrent_updates_with_one_etag_exactly_one_wins(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    writers = 8

    async def update(i: int) -> Any:
        try:
            return await stub.UpdateAgent(
                pb.UpdateAgentRequest(
                    agent=res.Agent(name=created.name, etag=created.etag, description=f"w{i}"),
                    update_mask=FieldMask(paths=["description"]),
                )
            )
        except grpc.aio.AioRpcError as err:
            return err

    results = await asyncio.gather(*(update(i) for i in range(writers)))
    winners = [r for r in results if isinstance(r, pb.UpdateAgentResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == writers - 1
    assert {e.code() for e in losers} == {grpc.StatusCode.ABORTED}
    assert {error_info(e).reason for e in losers} == {"ETAG_MISMATCH"}
    got = (await stub.GetAgent(pb.GetAgentRequest(name=created.name))).agent
    assert got.description == winners[0].agent.description
    assert got.etag == winners[0].agent.etag


async def test_one_conditional_update_decides_between_writers_who_read_the_same_version(
    workspace: Workspace, execution_stub: Stub, execution: RunningExecution
) -> None:
    """The guarantee itself, below the servicer: every writer has read the same version
    before any of them writes, and the conditional UPDATE lets exactly one through."""
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    current = await get_agent(execution.pool, ws, "support-bot")
    assert current is not None and current.etag == created.etag
    writers = 8
    results = await asyncio.gather(
        *(
            agent_repository.update_if_unchanged(
                execution.pool,
                current,
                dataclasses.replace(current.spec, description=f"w{i}"),
                new_etag=f"etag-{i}",
            )
            for i in range(writers)
        )
    )
    written = [r for r in results if r is not None]
    assert len(written) == 1
    got = await get_agent(execution.pool, ws, "support-bot")
    assert got is not None and got.etag == written[0].etag
    assert got.spec.description == written[0].spec.description


async def test_concurrent_updates_without_an_etag_all_apply(
    workspace: Workspace, execution_stub: Stub
) -> None:
    """Without an etag each update applies to the latest version (none is lost to a race)."""
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    results = await asyncio.gather(
        *(
            stub.UpdateAgent(
                pb.UpdateAgentRequest(
                    agent=res.Agent(name=created.name, description=f"w{i}"),
                    update_mask=FieldMask(paths=["description"]),
                )
            )
            for i in range(3)
        )
    )
    assert len({r.agent.etag for r in results}) == 3


# --- save-time checks -----------------------------------------------------------------------


async def test_invalid_schemas_are_refused_with_a_violation_each(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    bad_input = {"type": "object", "properties": {"email": {"type": "strin"}}}
    bad_output = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "object"}}},
        "patternProperties": {"^x": {}},
    }
    err = await expect_error(
        create(stub, ws, input_schema=struct(bad_input), output_schema=struct(bad_output)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert sorted(violations(err)) == [
        "agent.input_schema.properties.email.type",
        "agent.output_schema.additionalProperties",
        "agent.output_schema.patternProperties",
        "agent.output_schema.properties.items.items.additionalProperties",
        "agent.output_schema.required",
    ]
    assert "openai structured output" in err.details()
    await expect_error(
        stub.GetAgent(pb.GetAgentRequest(name=f"workspaces/{ws}/agents/support-bot")),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.parametrize(
    "document",
    [
        {"type": "object", "properties": {"n": {"type": "number", "maximum": math.nan}}},
        {"type": "object", "properties": {"n": {"type": "number", "minimum": -math.inf}}},
        {"type": "object", "description": "a\x00b"},
        {"type": "object", "properties": {"a\x00": {"type": "string"}}},
    ],
    ids=["nan", "infinity", "nul-in-a-string", "nul-in-a-name"],
)
async def test_a_schema_that_json_or_the_database_cannot_hold_is_invalid(
    workspace: Workspace, execution_stub: Stub, document: dict[str, Any]
) -> None:
    ws, stub = await workspace(), execution_stub()
    err = await expect_error(
        create(stub, ws, input_schema=struct(document)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations(err) == ["agent.input_schema"]
    await expect_error(
        stub.GetAgent(pb.GetAgentRequest(name=f"workspaces/{ws}/agents/support-bot")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_refusal_with_many_violations_stays_readable_by_any_client(
    workspace: Workspace, execution_stub: Stub
) -> None:
    """Hundreds of problems (each open object, each misspelled type) would overflow the 8 KB
    of metadata a client accepts: the first are listed, the others counted."""
    ws, stub = await workspace(), execution_stub()
    name = "property-" + "n" * 100
    bad_input = {
        "type": "object",
        "properties": {f"{name}{i}": {"type": "strin"} for i in range(40)},
    }
    open_objects = {f"{name}{i}": {"type": "object"} for i in range(100)}
    bad_output = {"type": "object", "properties": open_objects}
    for request in (
        create(stub, ws, input_schema=struct(bad_input)),
        create(stub, ws, output_schema=struct(bad_output)),
    ):
        err = await expect_error(request, grpc.StatusCode.INVALID_ARGUMENT)
        assert 1 < len(violations(err)) < 40
        assert (err.details() or "").endswith("more problems")


async def test_a_subschema_may_not_declare_another_dialect(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    nested = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}
    document = {"type": "object", "properties": {"email": nested}}
    err = await expect_error(
        create(stub, ws, input_schema=struct(document)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations(err) == ["agent.input_schema.properties.email.$schema"]


async def test_an_output_schema_must_have_an_object_root_and_no_remote_refs(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    err = await expect_error(
        create(stub, ws, output_schema=struct({"type": "array"})), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations(err) == ["agent.output_schema.type"]
    err = await expect_error(
        create(stub, ws, input_schema=struct({"$ref": "http://127.0.0.1:9/schema.json"})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == ["agent.input_schema"]


async def test_changing_the_route_rechecks_the_stored_output_schema(
    workspace: Workspace, execution_stub: Stub
) -> None:
    """`maxItems` suits OpenAI's structured output but not Anthropic's: moving the agent to
    Anthropic is refused, naming the stored schema's keyword."""
    ws, stub = await workspace(), execution_stub()
    created = await create(stub, ws)
    err = await expect_error(
        stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=created.name, routes=[route(ANTHROPIC, "claude-sonnet-4-5")]),
                update_mask=FieldMask(paths=["routes"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == ["agent.output_schema.properties.items.maxItems"]
    assert "anthropic" in err.details()
    got = (await stub.GetAgent(pb.GetAgentRequest(name=created.name))).agent
    assert got == created


async def test_routes_ids_and_texts_are_checked_with_the_execute_rules(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"routes": []}, ["agent.routes"]),
        ({"routes": [route()] * 5}, ["agent.routes"]),
        (
            {"routes": [route(provider=0, model="bad model", max_tokens=0, top_p=2.0)]},
            [
                "agent.routes[0].provider",
                "agent.routes[0].model",
                "agent.routes[0].generation_config.max_tokens",
                "agent.routes[0].generation_config.top_p",
            ],
        ),
        ({"display_name": "x" * 257}, ["agent.display_name"]),
        ({"display_name": "line\nbreak"}, ["agent.display_name"]),
        ({"instructions": "x" * 100_001}, ["agent.instructions"]),
        ({"labels": {"Bad Key": "v"}}, ["agent.labels"]),
    ]
    for changes, fields in cases:
        err = await expect_error(create(stub, ws, **changes), grpc.StatusCode.INVALID_ARGUMENT)
        assert violations(err) == fields, changes
    err = await expect_error(
        stub.CreateAgent(
            pb.CreateAgentRequest(parent="workspaces/", agent_id="has space", agent=agent())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == ["parent", "agent_id"]
    for name in ("workspaces/x/agents/", "workspaces/x/agents/a/b", f"workspaces/{ws}/agent/a"):
        err = await expect_error(
            stub.GetAgent(pb.GetAgentRequest(name=name)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violations(err) == ["name"]


# --- authorization --------------------------------------------------------------------------


async def call_each_agent_method(stub: Any, ws: str) -> dict[str, grpc.StatusCode]:
    name = f"workspaces/{ws}/agents/auth-{uuid.uuid4().hex[:6]}"
    calls = {
        "CreateAgent": lambda: stub.CreateAgent(
            pb.CreateAgentRequest(
                parent=f"workspaces/{ws}", agent_id=name.rsplit("/", 1)[1], agent=agent()
            )
        ),
        "GetAgent": lambda: stub.GetAgent(pb.GetAgentRequest(name=name)),
        "ListAgents": lambda: stub.ListAgents(pb.ListAgentsRequest(parent=f"workspaces/{ws}")),
        "UpdateAgent": lambda: stub.UpdateAgent(
            pb.UpdateAgentRequest(
                agent=res.Agent(name=name, description="d"),
                update_mask=FieldMask(paths=["description"]),
            )
        ),
        "DeleteAgent": lambda: stub.DeleteAgent(pb.DeleteAgentRequest(name=name)),
    }
    codes = {}
    for method, call in calls.items():
        try:
            await call()
            codes[method] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            codes[method] = err.code()
    return codes


async def test_app_manages_agents(workspace: Workspace, execution_stub: Stub) -> None:
    codes = await call_each_agent_method(execution_stub("app"), await workspace())
    assert set(codes.values()) == {grpc.StatusCode.OK}


async def test_admin_reads_agents_but_cannot_change_them(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace()
    existing = await create(execution_stub(), ws)
    codes = await call_each_agent_method(execution_stub("admin"), ws)
    assert codes == {
        "CreateAgent": grpc.StatusCode.PERMISSION_DENIED,
        "GetAgent": grpc.StatusCode.NOT_FOUND,  # allowed; the made-up agent does not exist
        "ListAgents": grpc.StatusCode.OK,
        "UpdateAgent": grpc.StatusCode.PERMISSION_DENIED,
        "DeleteAgent": grpc.StatusCode.PERMISSION_DENIED,
    }
    admin = execution_stub("admin")
    assert (await admin.GetAgent(pb.GetAgentRequest(name=existing.name))).agent == existing
    listed = await admin.ListAgents(pb.ListAgentsRequest(parent=f"workspaces/{ws}"))
    assert [a.name for a in listed.agents] == [existing.name]


@pytest.mark.parametrize("workload", ["keyvault", "execution"])
async def test_other_workloads_may_not_touch_agents(
    workload: str, workspace: Workspace, execution_stub: Stub
) -> None:
    codes = await call_each_agent_method(execution_stub(workload), await workspace())
    assert set(codes.values()) == {grpc.StatusCode.PERMISSION_DENIED}


async def test_permission_is_checked_before_the_request(execution_stub: Stub) -> None:
    err = await expect_error(
        execution_stub("admin").CreateAgent(pb.CreateAgentRequest(parent="bad")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "PERMISSION_DENIED"
