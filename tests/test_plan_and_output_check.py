"""Pure tests of the plan (an Execute request becomes what the engine runs) and of the output
check at the end of a stream. No I/O."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import grpc
import pytest

from clients._types import struct
from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from execution_service.agent_store import AgentCache
from execution_service.agents import Agent, AgentSpec, GenerationSettings, Route
from execution_service.errors import AgentNotFound, InputSchemaViolation
from execution_service.output_check import MAX_REFUSAL_CHARS, check_output
from execution_service.plan import (
    MAX_INPUT_VIOLATIONS,
    AgentCall,
    AgentPlanner,
    ExecutionPlan,
    agent_plan,
    decode,
    input_message,
)
from execution_service.schemas import JsonSchema
from service_kit.errors import InvalidArgument

OUTPUT = JsonSchema.of(
    {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["answer", "n"],
        "additionalProperties": False,
    }
)
INPUT = JsonSchema.of(
    {
        "type": "object",
        "properties": {
            "customer": {
                "type": "object",
                "properties": {"email": {"type": "string", "format": "email"}},
                "required": ["email"],
            }
        },
        "required": ["customer"],
    }
)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def an_agent(**spec: Any) -> Agent:
    fields: dict[str, Any] = {
        "instructions": "Be brief.",
        "routes": (Route("anthropic", "claude-sonnet-4-5", GenerationSettings(max_tokens=99)),),
        "input_schema": INPUT,
        "output_schema": OUTPUT,
    }
    fields.update(spec)
    return Agent("ws1", "bot", AgentSpec(**fields), NOW, NOW, "etag-1")


def call(document: Any) -> AgentCall:
    return AgentCall("ws1", "bot", document, "req-1", {"team": "a"})


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


# --- plan: the agent form -----------------------------------------------------------------------


def test_an_agent_plan_carries_instructions_input_route_and_schema() -> None:
    plan = agent_plan(call({"customer": {"email": "a@example.com"}, "z": 1, "a": [2]}), an_agent())
    assert plan.agent == "workspaces/ws1/agents/bot" and plan.agent_etag == "etag-1"
    assert plan.provider == "anthropic" and plan.chat.model == "claude-sonnet-4-5"
    assert plan.chat.max_tokens == 99
    assert [(m.role, m.content) for m in plan.chat.messages] == [
        ("system", "Be brief."),
        ("user", '{"a":[2],"customer":{"email":"a@example.com"},"z":1}'),
    ]
    assert plan.output_schema == OUTPUT
    assert plan.chat.output_schema is not None and plan.chat.output_schema.name == "bot"
    assert plan.chat.output_schema.schema == OUTPUT.document
    assert plan.request_id == "req-1" and plan.labels == {"team": "a"}


def test_no_instructions_means_no_system_message_and_no_schema_means_free_text() -> None:
    plan = agent_plan(
        call({"x": 1}), an_agent(instructions="", input_schema=None, output_schema=None)
    )
    assert [m.role for m in plan.chat.messages] == ["user"]
    assert plan.output_schema is None and plan.chat.output_schema is None


def test_input_violations_name_their_json_pointers() -> None:
    with pytest.raises(InputSchemaViolation) as caught:
        agent_plan(call({"customer": {"email": "nope"}}), an_agent())
    assert [v.field for v in caught.value.violations] == ["input/customer/email"]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input/customer/email" in caught.value.message
    with pytest.raises(InputSchemaViolation) as caught:
        agent_plan(call({}), an_agent())
    assert [v.field for v in caught.value.violations] == ["input"]


def test_many_input_violations_are_listed_up_to_a_bound() -> None:
    schema = JsonSchema.of({"type": "object", "additionalProperties": {"type": "integer"}})
    document = {f"k{i}": "x" for i in range(20)}
    with pytest.raises(InputSchemaViolation) as caught:
        agent_plan(call(document), an_agent(input_schema=schema))
    fields = [v.field for v in caught.value.violations]
    assert len(fields) == MAX_INPUT_VIOLATIONS + 1 and fields[-1] == "input"
    assert "(and 18 more)" in caught.value.message
    with pytest.raises(InvalidArgument) as caught:
        agent_plan(call([1]), an_agent(input_schema=None))
    assert violations(caught) == ["input"]


def test_a_missing_agent_is_not_found() -> None:
    with pytest.raises(AgentNotFound):
        agent_plan(call({}), None)


def test_input_message_is_compact_with_sorted_keys() -> None:
    assert input_message({"b": 1, "a": {"d": "é", "c": None}}) == '{"a":{"c":null,"d":"é"},"b":1}'


# --- plan: decoding the request -----------------------------------------------------------------


def by_agent(**fields: Any) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(parent="workspaces/ws1", agent="workspaces/ws1/agents/bot", **fields)


def test_the_agent_form_decodes_input_and_input_json() -> None:
    decoded = decode(by_agent(input=struct({"n": 3, "x": [1.5]}), request_id="r-1"))
    assert isinstance(decoded, AgentCall) and decoded.request_hash is not None
    expected = AgentCall("ws1", "bot", {"n": 3, "x": [1.5]}, "r-1", {}, decoded.request_hash)
    assert decoded == expected
    decoded = decode(by_agent(input_json='{"big": 12345678901234567890}'))
    assert isinstance(decoded, AgentCall) and decoded.input == {"big": 12345678901234567890}


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (by_agent(), ["input"]),
        (by_agent(input_json="{"), ["input_json"]),
        (by_agent(input_json="Infinity"), ["input_json"]),
        (by_agent(input_json="[" * 100_000), ["input_json"]),
        (
            by_agent(input_json="{}", agent_id="x", model="m", output_schema=struct({})),
            ["agent_id", "model", "output_schema"],
        ),
        (
            by_agent(input_json="{}", generation_config=res.GenerationConfig()),
            ["generation_config"],
        ),
        (
            pb.ExecuteRequest(
                parent="workspaces/ws2", agent="workspaces/ws1/agents/bot", input_json="{}"
            ),
            ["agent"],
        ),
        (
            pb.ExecuteRequest(parent="workspaces/ws1", agent="agents/bot", input_json="{}"),
            ["agent"],
        ),
        (by_agent(input_json="{}", request_id="bad id"), ["request_id"]),
    ],
)
def test_the_agent_form_refuses_bad_fields(request_: pb.ExecuteRequest, fields: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode(request_)
    assert violations(caught) == fields


def ad_hoc(**fields: Any) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        parent="workspaces/ws1",
        agent_id="a1",
        provider=kv_res.PROVIDER_OPENAI,
        model="gpt-4o-mini",
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="hi")],
        **fields,
    )


def test_an_ad_hoc_request_plans_with_its_output_schema() -> None:
    plan = decode(ad_hoc(output_schema=struct(OUTPUT.document)))
    assert isinstance(plan, ExecutionPlan)
    assert plan.output_schema == OUTPUT and plan.agent == ""
    assert plan.chat.output_schema is not None and plan.chat.output_schema.schema == OUTPUT.document
    plain = decode(ad_hoc())
    assert isinstance(plain, ExecutionPlan) and plain.output_schema is None


def test_an_ad_hoc_output_schema_must_suit_the_provider_and_input_is_agent_only() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(InvalidArgument) as caught:
        decode(ad_hoc(output_schema=struct(loose), input_json="{}"))
    fields = violations(caught)
    assert "input_json" in fields
    assert any(f.startswith("output_schema") for f in fields)


# --- output check -------------------------------------------------------------------------------


def test_valid_output_is_parsed() -> None:
    verdict = check_output(OUTPUT, '{"answer": "x", "n": 2}', refusal=None, finish_reason="stop")
    assert verdict.error is None and verdict.output == {"answer": "x", "n": 2}
    assert verdict.output_valid is True


def test_free_text_is_not_judged() -> None:
    verdict = check_output(None, "not json", refusal=None, finish_reason="stop")
    assert verdict.error is None and verdict.output is None and verdict.output_valid is None


def test_schema_violations_are_listed_and_the_first_named_in_the_message() -> None:
    verdict = check_output(
        OUTPUT, '{"answer": 1, "n": "2", "x": 0}', refusal=None, finish_reason="stop"
    )
    assert verdict.error is not None and verdict.error.reason == "OUTPUT_SCHEMA_VIOLATION"
    pointers = [v.pointer for v in verdict.error.violations]
    assert set(pointers) == {"output", "output/answer", "output/n"}
    assert pointers[0] in verdict.error.message
    assert verdict.output == {"answer": 1, "n": "2", "x": 0} and verdict.output_valid is False


def test_invalid_json_is_a_violation_at_output() -> None:
    verdict = check_output(OUTPUT, '{"answer": "x",}', refusal=None, finish_reason="stop")
    assert verdict.error is not None and verdict.error.reason == "OUTPUT_SCHEMA_VIOLATION"
    assert [v.pointer for v in verdict.error.violations] == ["output"]
    assert "token limit" not in verdict.error.violations[0].description
    assert verdict.output is None and verdict.output_valid is False
    assert check_output(OUTPUT, "NaN", refusal=None, finish_reason="stop").error is not None


@pytest.mark.parametrize("reason", ["length", "max_tokens"])
def test_a_cut_at_the_token_limit_says_so(reason: str) -> None:
    verdict = check_output(OUTPUT, '{"answer": "x', refusal=None, finish_reason=reason)
    assert verdict.error is not None
    assert "token limit" in verdict.error.violations[0].description


def test_a_refusal_fails_whatever_the_text_and_is_bounded() -> None:
    verdict = check_output(OUTPUT, '{"answer": "x", "n": 1}', refusal="No.", finish_reason="stop")
    assert verdict.error is not None and verdict.error.reason == "OUTPUT_REFUSED"
    assert "No." in verdict.error.message and verdict.output_valid is False
    long = check_output(None, "", refusal="x" * 10_000, finish_reason="stop")
    assert long.error is not None and len(long.error.message) < MAX_REFUSAL_CHARS + 50
    assert long.output_valid is None
    assert check_output(None, "", refusal="", finish_reason="refusal").error is not None


def test_many_violations_are_summarized() -> None:
    schema = JsonSchema.of({"type": "object", "additionalProperties": {"type": "string"}})
    text = json.dumps({f"k{i}": i for i in range(10)})
    verdict = check_output(schema, text, refusal=None, finish_reason="stop")
    assert verdict.error is not None and len(verdict.error.violations) == 10
    assert "(and 7 more)" in verdict.error.message


# --- the agents kept in memory ------------------------------------------------------------------


def test_the_agent_cache_is_bounded_by_bytes_and_drops_the_least_recently_used() -> None:
    def sized(agent_id: str, chars: int) -> Agent:
        spec = AgentSpec(instructions="x" * chars, routes=(Route("openai", "m"),))
        return Agent("ws1", agent_id, spec, NOW, NOW, "e")

    cache = AgentCache(max_bytes=10_000)
    cache.put(sized("a", 3000))
    cache.put(sized("b", 3000))
    assert cache.get("ws1", "a") is not None  # now the most recently used
    cache.put(sized("c", 3000))  # over the budget: b goes
    assert cache.get("ws1", "b") is None
    assert cache.get("ws1", "a") is not None and cache.get("ws1", "c") is not None
    cache.put(sized("huge", 20_000))  # never fits: not kept, nothing else dropped
    assert cache.get("ws1", "huge") is None and len(cache) == 2
    cache.drop("ws1", "a")
    assert cache.get("ws1", "a") is None and len(cache) == 1
    assert cache.get("ws2", "c") is None  # per workspace


@pytest.mark.parametrize("number", ["1e400", "-1e999", str(2**1024), "NaN", "Infinity"])
def test_numbers_without_a_double_are_not_accepted_json(number: str) -> None:
    text = f'{{"answer": "x", "n": {number}}}'
    verdict = check_output(OUTPUT, text, refusal=None, finish_reason="stop")
    assert verdict.error is not None and verdict.error.violations[0].pointer == "output"
    with pytest.raises(InvalidArgument) as caught:
        decode(by_agent(input_json=text))
    assert violations(caught) == ["input_json"]


def test_large_numbers_within_range_are_kept_exactly() -> None:
    decoded = decode(by_agent(input_json='{"n": 123456789012345678901234567890, "f": 1e300}'))
    assert isinstance(decoded, AgentCall)
    assert decoded.input == {"n": 123456789012345678901234567890, "f": 1e300}


async def test_the_planner_refuses_only_for_the_agent_as_it_is_now() -> None:
    stale = an_agent()  # requires customer.email
    now = an_agent(input_schema=None)  # since relaxed
    reads: list[str] = []

    async def copy(workspace: str, agent_id: str) -> Agent | None:
        reads.append("copy")
        return stale

    async def fresh(workspace: str, agent_id: str) -> Agent | None:
        reads.append("fresh")
        return now

    planner = AgentPlanner(copy, fresh)
    assert (await planner.plan(call({"customer": {"email": "a@example.com"}}))).agent_etag
    assert reads == ["copy"]  # a valid plan from the copy needs no read
    await planner.plan(call({"anything": 1}))
    assert reads == ["copy", "copy", "fresh"]
    await planner.plan(call({"x": 1}), fresh=True)
    assert reads[-1] == "fresh" and reads.count("copy") == 2

    async def gone(workspace: str, agent_id: str) -> Agent | None:
        return None

    with pytest.raises(AgentNotFound):
        await AgentPlanner(copy, gone).plan(call({}))
