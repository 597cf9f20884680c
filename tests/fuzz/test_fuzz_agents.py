"""The agents RPCs of execution.v1.ExecutionService, fuzzed (the properties: properties.py).

Writes go to three agent ids of the pool workspaces, so that creates meet existing agents,
updates and deletes meet both existing and missing ones, and etags go stale. Beyond the
general properties: a successful CreateAgent is read back by GetAgent as it was sent, and a
write carrying an etag the agent does not have never succeeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import example, given
from hypothesis import strategies as st

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import resources_pb2 as res
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.properties import EX, Answer, callers, check_call
from tests.fuzz.stack import ANONYMOUS, FuzzStack
from tests.fuzz.strategies import (
    AGENT_IDS,
    AGENT_TOKENS,
    ALL_INVALID,
    ALL_VALID,
    EITHER,
    INVALID,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    NO_SCHEMA,
    POOL_AGENT_IDS,
    RULES,
    SEED,
    SEED_AGENT_IDS,
    TAME_LABELS,
    TAME_ROUTES,
    TAME_SCHEMAS,
    TAME_TEXT,
    TEXT_LIMITS,
    UPDATABLE,
    VALID,
    WORKSPACES,
    Drawn,
    EtagRecipe,
    Mask,
    Schema,
    TokenRecipe,
    agent_names,
    agent_texts,
    bad,
    closed,
    combine,
    deep_schema,
    etags,
    labels,
    mask_of,
    mostly_valid,
    ok,
    page_sizes,
    parents,
    route_providers,
    routes,
    schemas,
    sized_schema,
    update_masks,
)

SEED_PARENT = f"workspaces/{SEED}"
SEED_OR_ANY = st.one_of(st.just(SEED), WORKSPACES)


@dataclass(frozen=True)
class AgentDraw:
    """An agent's fields with what the contract says of each (the output schema's verdict is
    its own validity; `fit` judges it on the route)."""

    texts: dict[str, str]
    routes: list[res.Route]
    labels: dict[str, str]
    input: Schema
    output: Schema
    verdicts: dict[str, str]  # updatable field -> verdict
    providers: frozenset[str] | None  # the routes' providers, when the routes are valid

    def fill(self, message: res.Agent) -> None:
        """Set the fields on `message` in place: a copy of a Struct nested past protobuf's
        parse depth (as some schemas are, on purpose) would fail in the client."""
        for field, text in self.texts.items():
            setattr(message, field, text)
        message.routes.extend(self.routes)
        message.labels.update(self.labels)
        for field, schema in (("input_schema", self.input), ("output_schema", self.output)):
            if schema.document is not None:
                getattr(message, field).SetInParent()  # set, even when empty ({})
                getattr(message, field).update(schema.document)

    def fit(self, changed: frozenset[str]) -> str:
        """What the contract says of the output schema on the route, for a write that sets
        `changed`. A field left unchanged keeps its stored value, which the draw does not
        know: then only a fit known for both providers decides."""
        if "output_schema" not in changed:
            return EITHER if "routes" in changed else VALID
        if self.output.document is None:
            return VALID
        if "routes" in changed and self.providers is not None:
            return combine(*(self.output.fit[p] for p in self.providers))
        return VALID if set(self.output.fit.values()) == {VALID} else EITHER


def _agent_draw(
    texts: dict[str, Drawn], route: Drawn, input_schema: Schema, output_schema: Schema, label: Drawn
) -> AgentDraw:
    verdicts = {field: drawn.verdict for field, drawn in texts.items()}
    verdicts |= {
        "routes": route.verdict,
        "input_schema": input_schema.as_input,
        "output_schema": output_schema.as_output,
        "labels": label.verdict,
    }
    return AgentDraw(
        texts={field: drawn.value for field, drawn in texts.items()},
        routes=route.value,
        labels=label.value,
        input=input_schema,
        output=output_schema,
        verdicts=verdicts,
        providers=route_providers(route),
    )


@st.composite
def agents(draw: st.DrawFn) -> AgentDraw:
    """An agent with up to three hostile fields (and often hostile schemas, the richest
    ground); the others are valid."""
    hostile = draw(st.sets(st.sampled_from(UPDATABLE), max_size=3))
    hostile |= {f for f in ("input_schema", "output_schema") if draw(st.booleans())}

    def pick(field: str, wild: st.SearchStrategy[Any], tame: st.SearchStrategy[Any]) -> Any:
        return draw(wild if field in hostile else tame)

    texts = {f: pick(f, agent_texts(f), TAME_TEXT.map(ok)) for f in TEXT_LIMITS}
    route = pick("routes", routes(), TAME_ROUTES.map(ok))
    input_schema = pick("input_schema", schemas(), TAME_SCHEMAS)
    output_schema = pick("output_schema", schemas(), TAME_SCHEMAS)
    label = pick("labels", labels(), TAME_LABELS.map(ok))
    return _agent_draw(texts, route, input_schema, output_schema, label)


def agent_of(
    *,
    provider: int = 1,
    input_schema: Schema = NO_SCHEMA,
    output_schema: Schema = NO_SCHEMA,
    **fields: Drawn,
) -> AgentDraw:
    """A valid agent on one route of `provider`, with the fields given changed."""
    texts = {field: fields.pop(field, ok("")) for field in TEXT_LIMITS}
    one_route = [res.Route(provider=provider, model="gpt-4o-mini")]
    route = fields.pop("routes", Drawn(one_route, VALID if provider in (1, 2) else INVALID))
    label = fields.pop("labels", ok({}))
    assert not fields, fields
    return _agent_draw(texts, route, input_schema, output_schema, label)


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def _route(route: res.Route) -> tuple[int, str, dict[str, Any]]:
    return route.provider, route.model, _as_dict(route.generation_config)


def get_agent(stack: FuzzStack, name: str) -> res.Agent:
    response = stack.channel("execution", "app").unary_unary(
        EX + "GetAgent",
        request_serializer=ex.GetAgentRequest.SerializeToString,
        response_deserializer=ex.GetAgentResponse.FromString,
    )(ex.GetAgentRequest(name=name), timeout=30)
    agent: res.Agent = response.agent
    return agent


def assert_as_sent(sent: res.Agent, fields: frozenset[str], stored: res.Agent) -> None:
    """The fields a write set are stored as they were sent (schemas as JSON documents)."""
    for field in fields:
        if field in ("input_schema", "output_schema"):
            assert sent.HasField(field) == stored.HasField(field), f"{field} presence"
            assert _as_dict(getattr(sent, field)) == _as_dict(getattr(stored, field)), field
        elif field == "routes":
            assert [_route(r) for r in sent.routes] == [_route(r) for r in stored.routes]
        elif field == "labels":
            assert dict(sent.labels) == dict(stored.labels)
        else:
            assert getattr(sent, field) == getattr(stored, field), field


def _split(name: str) -> tuple[str, str] | None:
    """(workspace, agent id) of a well-formed agent name."""
    if not RULES["agent_name"].fullmatch(name):
        return None
    _, workspace, _, agent_id = name.split("/")
    return workspace, agent_id


# --- CreateAgent -----------------------------------------------------------------------------

# Known shapes, each pinned with @example below.
NAN_SCHEMA = closed({"n": {"type": "number", "maximum": math.nan}})
DRAFT_07 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}
# Dozens of long meta-schema errors: once more than a client's 8 KB of error metadata.
MANY_PROBLEMS = {"items": None, "type": None, "properties": {"": 9.74e208}}
NUL_SCHEMA = closed({"a": {"type": "string", "description": "a\x00b"}})
CREATE = dict(parent=ok("workspaces/fuzz-a"), agent_id=ok("agent-a"), agent=agent_of(), who="app")


def _schema(document: dict[str, Any], as_input: str, as_output: str, **fit: str) -> Schema:
    return Schema(document, "pinned", as_input, as_output, {**ALL_VALID, **fit})


def _bad_schema(document: dict[str, Any]) -> Schema:
    return Schema(document, "pinned", INVALID, INVALID, ALL_INVALID)


@fuzz_settings
@given(
    parent=mostly_valid("parent", WORKSPACES.map(lambda ws: f"workspaces/{ws}")),
    agent_id=mostly_valid("agent_id", st.one_of(POOL_AGENT_IDS, AGENT_IDS)),
    agent=agents(),
    who=callers("app"),
)
@example(**{**CREATE, "agent_id": bad("agent-a\n")})
@example(**{**CREATE, "agent_id": bad("agent\x00a")})
@example(**{**CREATE, "agent": agent_of(display_name=bad("two\nlines"))})
@example(**{**CREATE, "agent": agent_of(description=bad("a\x00b"))})
@example(**{**CREATE, "agent": agent_of(instructions=bad("x" * 100_001))})
@example(**{**CREATE, "agent": agent_of(instructions=ok("\U0001f600" * 100_000))})
@example(**{**CREATE, "agent": agent_of(routes=bad([]))})
@example(**{**CREATE, "agent": agent_of(routes=bad([res.Route(provider=1, model="m")] * 5))})
@example(**{**CREATE, "agent": agent_of(provider=0)})
@example(**{**CREATE, "agent": agent_of(labels=bad({"team": "co\x00re"}))})
@example(**{**CREATE, "agent": agent_of(input_schema=_bad_schema(NAN_SCHEMA))})
@example(**{**CREATE, "agent": agent_of(output_schema=_bad_schema(NAN_SCHEMA))})
@example(**{**CREATE, "agent": agent_of(input_schema=_bad_schema(NUL_SCHEMA))})
@example(
    **{
        **CREATE,
        "agent": agent_of(input_schema=_bad_schema({"$ref": "https://example.com/s.json"})),
    }
)
@example(
    **{
        **CREATE,
        "agent": agent_of(
            input_schema=_bad_schema({"$schema": "http://json-schema.org/draft-07/schema#"})
        ),
    }
)
@example(**{**CREATE, "agent": agent_of(input_schema=_bad_schema(closed({"f": DRAFT_07})))})
@example(**{**CREATE, "agent": agent_of(output_schema=_bad_schema(MANY_PROBLEMS))})
@example(**{**CREATE, "agent": agent_of(output_schema=_schema({}, VALID, INVALID))})
@example(
    **{**CREATE, "agent": agent_of(input_schema=_bad_schema(deep_schema(MAX_SCHEMA_DEPTH + 1)))}
)
@example(
    **{
        **CREATE,
        "agent": agent_of(input_schema=_schema(deep_schema(MAX_SCHEMA_DEPTH), VALID, INVALID)),
    }
)
@example(
    **{
        **CREATE,
        "agent": agent_of(input_schema=_schema(sized_schema(MAX_SCHEMA_BYTES), VALID, VALID)),
    }
)
@example(
    **{**CREATE, "agent": agent_of(output_schema=_bad_schema(sized_schema(MAX_SCHEMA_BYTES + 1)))}
)
@example(**{**CREATE, "agent": agent_of(output_schema=_schema({"type": "string"}, VALID, INVALID))})
@example(
    **{
        **CREATE,
        "agent": agent_of(
            output_schema=_schema(
                closed({"x": {"oneOf": [{"type": "string"}]}}), VALID, VALID, openai=INVALID
            )
        ),
    }
)
@example(
    **{
        **CREATE,
        "agent": agent_of(
            provider=2,
            output_schema=_schema(
                closed({"x": {"type": "number", "minimum": 0}}), VALID, VALID, anthropic=INVALID
            ),
        ),
    }
)
@example(**{**CREATE, "who": "admin"})
@example(**{**CREATE, "who": "execution"})
@example(**{**CREATE, "who": ANONYMOUS})
def test_create_agent(
    fuzz_stack: FuzzStack, parent: Drawn, agent_id: Drawn, agent: AgentDraw, who: str
) -> None:
    request = ex.CreateAgentRequest(parent=parent.value, agent_id=agent_id.value)
    agent.fill(request.agent)
    verdict = combine(
        parent.verdict,
        agent_id.verdict,
        *agent.verdicts.values(),
        agent.fit(frozenset(UPDATABLE)),
    )
    answer = check_call(fuzz_stack, EX + "CreateAgent", request, verdict, who)
    if answer.code == grpc.StatusCode.OK:
        created = ex.CreateAgentResponse.FromString(answer.body).agent
        assert created.name == f"{parent.value}/agents/{agent_id.value}"
        assert created.etag and created.create_time == created.update_time
        assert_as_sent(request.agent, frozenset(UPDATABLE), created)
        read = get_agent(fuzz_stack, created.name)
        assert read == created, "GetAgent does not return the agent CreateAgent stored"


# --- GetAgent --------------------------------------------------------------------------------

SEED_AGENT = f"{SEED_PARENT}/agents/{SEED_AGENT_IDS[0]}"


@fuzz_settings
@given(
    name=st.one_of(
        agent_names(SEED_OR_ANY, st.one_of(st.sampled_from(SEED_AGENT_IDS), POOL_AGENT_IDS)),
        agent_names(),
    ),
    who=callers("app"),
)
@example(name=ok(SEED_AGENT), who="admin")
@example(name=ok(SEED_AGENT), who="execution")
@example(name=ok(SEED_AGENT), who="keyvault")
@example(name=ok(SEED_AGENT), who=ANONYMOUS)
@example(name=bad(SEED_AGENT + "\n"), who="app")
@example(name=bad(SEED_AGENT + "\x00"), who="app")
@example(name=bad(SEED_AGENT + "/x"), who="app")
@example(name=bad(f"{SEED_PARENT}/agents/"), who="app")
@example(name=ok(f"workspaces/fuzz-a/agents/{SEED_AGENT_IDS[0]}"), who="app")  # another workspace's
def test_get_agent(fuzz_stack: FuzzStack, name: Drawn, who: str) -> None:
    answer = check_call(
        fuzz_stack, EX + "GetAgent", ex.GetAgentRequest(name=name.value), name.verdict, who
    )
    if answer.code == grpc.StatusCode.OK:
        assert ex.GetAgentResponse.FromString(answer.body).agent.name == name.value


# --- ListAgents ------------------------------------------------------------------------------

LIST = dict(
    parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("empty", verdict=VALID), who="app"
)


@fuzz_settings
@given(parent=parents(SEED_OR_ANY), size=page_sizes(), token=AGENT_TOKENS, who=callers("app"))
@example(**{**LIST, "size": ok(1001)})
@example(**{**LIST, "size": bad(-1)})
@example(**{**LIST, "token": TokenRecipe("genuine", verdict=VALID), "who": "admin"})
@example(**{**LIST, "token": TokenRecipe("field", "id", "a\n")})
@example(**{**LIST, "token": TokenRecipe("field", "id", 5)})
@example(**{**LIST, "token": TokenRecipe("field", "id", "a\x00")})
@example(**{**LIST, "token": TokenRecipe("field", "q", "workspaces/other")})
@example(**{**LIST, "parent": ok("workspaces/fuzz-a"), "token": TokenRecipe("genuine")})
@example(**{**LIST, "who": "execution"})
def test_list_agents(
    fuzz_stack: FuzzStack, parent: Drawn, size: Drawn, token: TokenRecipe, who: str
) -> None:
    request = ex.ListAgentsRequest(
        parent=parent.value,
        page_size=size.value,
        page_token=token.make(fuzz_stack.tokens["ListAgents"]),
    )
    verdict = combine(parent.verdict, size.verdict, token.verdict_for(parent.value == SEED_PARENT))
    check_call(fuzz_stack, EX + "ListAgents", request, verdict, who)


# --- UpdateAgent and DeleteAgent: masks, etags -----------------------------------------------


def _etag_for(stack: FuzzStack, recipe: EtagRecipe, name: str, current: str | None) -> str:
    if recipe.kind == "current":
        return current or "0" * 24
    if recipe.kind == "stale":
        return stack.stale_etags.get(name, "f" * 24)
    return recipe.text


def _write_checked(
    stack: FuzzStack, name: str, recipe: EtagRecipe, etag: str, current: str | None, answer: Answer
) -> None:
    """A write with an etag the agent does not have never succeeds; a write that succeeds
    makes the etag it replaced stale."""
    if etag and etag != current:
        assert answer.code != grpc.StatusCode.OK, f"a write with a wrong etag succeeded: {etag!r}"
    if answer.code == grpc.StatusCode.OK and current is not None:
        stack.stale_etags[name] = current


UPDATE = dict(
    name=ok("workspaces/fuzz-a/agents/agent-a"),
    agent=agent_of(),
    mask=mask_of([]),
    etag=EtagRecipe("current"),
    who="app",
)


@fuzz_settings
@given(name=agent_names(), agent=agents(), mask=update_masks(), etag=etags(), who=callers("app"))
@example(**{**UPDATE, "mask": mask_of(["name"])})
@example(**{**UPDATE, "mask": mask_of(["etag"])})
@example(**{**UPDATE, "mask": mask_of(["create_time"])})
@example(**{**UPDATE, "mask": mask_of(["display_name\n"])})
@example(**{**UPDATE, "mask": mask_of(["*"])})
@example(**{**UPDATE, "mask": mask_of(["labels"]), "etag": EtagRecipe("stale")})
@example(**{**UPDATE, "mask": mask_of(["labels"]), "etag": EtagRecipe("random", "ab" * 12)})
@example(**{**UPDATE, "etag": EtagRecipe("text", "e" * 129)})
@example(**{**UPDATE, "etag": EtagRecipe("text", "etag\n")})
@example(**{**UPDATE, "agent": agent_of(routes=bad([]))})
@example(**{**UPDATE, "agent": agent_of(routes=bad([])), "mask": mask_of(["description"])})
@example(**{**UPDATE, "agent": agent_of(output_schema=_bad_schema(NAN_SCHEMA))})
@example(**{**UPDATE, "name": bad("workspaces/fuzz-a/agents/agent-a\n")})
@example(**{**UPDATE, "who": "admin"})
def test_update_agent(
    fuzz_stack: FuzzStack, name: Drawn, agent: AgentDraw, mask: Mask, etag: EtagRecipe, who: str
) -> None:
    parts = _split(name.value)
    current = fuzz_stack.agent_etag(*parts) if parts else None
    sent_etag = _etag_for(fuzz_stack, etag, name.value, current)
    request = ex.UpdateAgentRequest(update_mask=mask.message())
    agent.fill(request.agent)
    request.agent.name, request.agent.etag = name.value, sent_etag
    fit = agent.fit(mask.fields)
    verdict = combine(
        name.verdict,
        mask.verdict,
        etag.verdict,
        *(agent.verdicts[f] for f in mask.fields),
        EITHER if fit == INVALID else fit,  # checked after the agent is found
    )
    answer = check_call(fuzz_stack, EX + "UpdateAgent", request, verdict, who)
    _write_checked(fuzz_stack, name.value, etag, sent_etag, current, answer)
    if answer.code == grpc.StatusCode.OK:
        updated = ex.UpdateAgentResponse.FromString(answer.body).agent
        assert updated.name == name.value and updated.etag != current
        assert_as_sent(request.agent, mask.fields, updated)
        assert get_agent(fuzz_stack, name.value) == updated


DELETE = dict(name=ok("workspaces/fuzz-b/agents/agent-b"), etag=EtagRecipe("none"), who="app")


@fuzz_settings
@given(name=agent_names(), etag=etags(), who=callers("app"))
@example(**{**DELETE, "etag": EtagRecipe("random", "cd" * 12)})
@example(**{**DELETE, "etag": EtagRecipe("stale")})
@example(**{**DELETE, "etag": EtagRecipe("text", "etag\x00")})
@example(**{**DELETE, "name": bad("workspaces/fuzz-b/agents/agent-b\r\n")})
@example(**{**DELETE, "who": "admin"})
@example(**{**DELETE, "who": "keyvault"})
def test_delete_agent(fuzz_stack: FuzzStack, name: Drawn, etag: EtagRecipe, who: str) -> None:
    parts = _split(name.value)
    current = fuzz_stack.agent_etag(*parts) if parts else None
    sent_etag = _etag_for(fuzz_stack, etag, name.value, current)
    request = ex.DeleteAgentRequest(name=name.value, etag=sent_etag)
    answer = check_call(
        fuzz_stack, EX + "DeleteAgent", request, combine(name.verdict, etag.verdict), who
    )
    _write_checked(fuzz_stack, name.value, etag, sent_etag, current, answer)
    if answer.code == grpc.StatusCode.OK:
        assert parts and fuzz_stack.agent_etag(*parts) is None, "the agent is still there"
