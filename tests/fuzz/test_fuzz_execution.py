"""Every RPC of execution.v1.ExecutionService, fuzzed (the properties: properties.py).

Valid executions run against the provider emulator (two short chunks each), and the base
URLs TestApiKey may call are the emulator's or a closed local port, so examples stay fast.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import resources_pb2 as res
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.properties import EX, callers, check_call
from tests.fuzz.stack import ANONYMOUS, FuzzStack
from tests.fuzz.strategies import (
    AGENT_IDS,
    API_KEYS,
    EITHER,
    EMULATOR,
    EXECUTION_TOKENS,
    INVALID,
    MODELS,
    REQUEST_IDS,
    SEED,
    TEXT,
    VALID,
    WORKSPACES,
    Drawn,
    TokenRecipe,
    bad,
    base_urls,
    checked,
    combine,
    enum_values,
    execution_names,
    generation_configs,
    hostile,
    labels,
    ok,
    optional,
    page_sizes,
    parents,
    time_cursor,
    timestamps,
    window,
)

SEED_PARENT = f"workspaces/{SEED}"
SEED_OR_ANY = st.one_of(st.just(SEED), WORKSPACES)
PROVIDERS = enum_values((1, 2))
USER, SYSTEM = res.MESSAGE_ROLE_USER, res.MESSAGE_ROLE_SYSTEM

# --- Execute ---------------------------------------------------------------------------------


@st.composite
def messages(draw: st.DrawFn) -> Drawn:
    roles = st.one_of(st.sampled_from([1, 2, 2, 3]), st.sampled_from([0, 4, -1, 2**31 - 1]))
    count = draw(st.one_of(st.integers(0, 4), st.just(1001)))
    first = draw(st.lists(st.tuples(roles, TEXT), min_size=min(count, 4), max_size=min(count, 4)))
    drawn = (first * (count // max(len(first), 1) + 1))[:count]
    valid = (
        1 <= len(drawn) <= 1000
        and all(role in (1, 2, 3) and content for role, content in drawn)
        and any(role != SYSTEM for role, _ in drawn)
    )
    value = [res.Message(role=role, content=content) for role, content in drawn]
    return Drawn(value, VALID if valid else INVALID)


OPTIONAL_REQUEST_IDS = optional("request_id", REQUEST_IDS)
HELLO = [res.Message(role=USER, content="hello")]
EXECUTE = dict(
    parent=ok(SEED_PARENT),
    agent_id=ok("agent-a"),
    provider=ok(1),
    model=ok("gpt-4o-mini"),
    messages=ok(HELLO),
    config=ok(res.GenerationConfig()),
    request_id=ok(""),
    labels=ok({}),
    who="app",
)


@fuzz_settings
@given(
    parent=parents(SEED_OR_ANY),
    agent_id=checked("agent_id", AGENT_IDS),
    provider=PROVIDERS,
    model=checked("model", MODELS),
    messages=messages(),
    config=generation_configs(),
    request_id=OPTIONAL_REQUEST_IDS,
    labels=labels(),
    who=callers("app"),
)
@example(**{**EXECUTE, "agent_id": bad("agent-a\n")})
@example(**{**EXECUTE, "model": bad("gpt-4o-mini\n")})
@example(**{**EXECUTE, "request_id": bad("rid-newline\n")})
@example(**{**EXECUTE, "labels": bad({"team\n": "core"})})
@example(**{**EXECUTE, "labels": Drawn({"team": "co\x00re"}, EITHER)})
@example(**{**EXECUTE, "config": bad(res.GenerationConfig(temperature=math.nan))})
@example(**{**EXECUTE, "config": bad(res.GenerationConfig(temperature=math.inf))})
@example(**{**EXECUTE, "config": bad(res.GenerationConfig(max_tokens=200_001))})
@example(**{**EXECUTE, "config": bad(res.GenerationConfig(max_tokens=0))})
@example(**{**EXECUTE, "messages": bad([res.Message(role=USER, content="x" * 1_000_001)])})
@example(**{**EXECUTE, "provider": bad(0)})
@example(**{**EXECUTE, "who": "admin"})
@example(**{**EXECUTE, "who": ANONYMOUS})
def test_execute(
    fuzz_stack: FuzzStack,
    parent: Drawn,
    agent_id: Drawn,
    provider: Drawn,
    model: Drawn,
    messages: Drawn,
    config: Drawn,
    request_id: Drawn,
    labels: Drawn,
    who: str,
) -> None:
    request = ex.ExecuteRequest(
        parent=parent.value,
        agent_id=agent_id.value,
        provider=provider.value,
        model=model.value,
        messages=messages.value,
        generation_config=config.value,
        request_id=request_id.value,
        labels=labels.value,
    )
    verdict = combine(
        *(d.verdict for d in (parent, agent_id, provider, model, messages, config, request_id)),
        labels.verdict,
    )
    check_call(fuzz_stack, EX + "Execute", request, verdict, who)


@example(suffix="\n")
@example(suffix="\r\n")
@fuzz_settings
@given(suffix=st.sampled_from(["\n", "\r\n", "\x00", " "]))
def test_execute_request_id_variants_are_not_new_executions(
    fuzz_stack: FuzzStack, suffix: str
) -> None:
    """`rid` and `rid` + a control character must not run as two executions: the variant is
    refused, which also keeps idempotency from being sidestepped."""
    rid = f"rid-{len(suffix)}-{ord(suffix[0])}"
    base = ex.ExecuteRequest(
        parent=SEED_PARENT, agent_id="agent-a", provider=1, model="gpt-4o-mini", messages=HELLO
    )
    first = ex.ExecuteRequest()
    first.CopyFrom(base)
    first.request_id = rid
    check_call(fuzz_stack, EX + "Execute", first, VALID, "app")
    variant = ex.ExecuteRequest()
    variant.CopyFrom(base)
    variant.request_id = rid + suffix
    check_call(fuzz_stack, EX + "Execute", variant, INVALID, "app")


# --- GetExecution ----------------------------------------------------------------------------

SEED_EXECUTION = "{seed-execution}"  # replaced by a real execution of the seed workspace


@fuzz_settings
@given(
    name=st.one_of(execution_names(SEED_OR_ANY), st.just(Drawn(SEED_EXECUTION, VALID))),
    who=callers("app"),
)
@example(name=ok(SEED_EXECUTION), who="admin")
@example(name=bad(SEED_EXECUTION + "\n"), who="app")
@example(name=ok(SEED_EXECUTION), who="execution")
@example(name=ok(SEED_EXECUTION), who=ANONYMOUS)
def test_get_execution(fuzz_stack: FuzzStack, name: Drawn, who: str) -> None:
    value = name.value.replace(SEED_EXECUTION, fuzz_stack.seed_execution)
    check_call(
        fuzz_stack, EX + "GetExecution", ex.GetExecutionRequest(name=value), name.verdict, who
    )


# --- ListExecutions and GetAgentStats: filters, time windows ---------------------------------

OPTIONAL_AGENT_IDS = optional("agent_id", AGENT_IDS)
STATES = enum_values((0, 1, 2, 3, 4))
NO_TIME = Drawn(None, VALID)


def _time_fields(start: Drawn, end: Drawn) -> dict[str, Any]:
    return {
        k: d.value for k, d in (("start_time", start), ("end_time", end)) if d.value is not None
    }


LIST = dict(
    parent=ok(SEED_PARENT),
    size=ok(0),
    token=TokenRecipe("empty", verdict=VALID),
    agent_id=ok(""),
    state=ok(0),
    start=NO_TIME,
    end=NO_TIME,
    who="app",
)


def _token_at(moment: str) -> TokenRecipe:
    return TokenRecipe("field", "t", moment, time_cursor(moment))


@fuzz_settings
@given(
    parent=parents(SEED_OR_ANY),
    size=page_sizes(),
    token=EXECUTION_TOKENS,
    agent_id=OPTIONAL_AGENT_IDS,
    state=STATES,
    start=timestamps(),
    end=timestamps(),
    who=callers("app"),
)
@example(**{**LIST, "size": ok(1001)})
@example(**{**LIST, "token": TokenRecipe("genuine", verdict=VALID)})
@example(**{**LIST, "token": _token_at("0001-01-01T00:00:00+14:00")})
@example(**{**LIST, "token": _token_at("0001-01-01T00:00:00-14:00")})
@example(**{**LIST, "token": _token_at("9999-12-31T23:59:59-14:00")})
@example(**{**LIST, "token": _token_at("9999-12-31T23:59:59+14:00")})
@example(**{**LIST, "token": TokenRecipe("field", "id", 5)})
@example(**{**LIST, "token": TokenRecipe("field", "t", 5)})
@example(**{**LIST, "agent_id": bad("agent-a\n")})
@example(**{**LIST, "state": bad(9)})
@example(**{**LIST, "who": "execution"})
def test_list_executions(
    fuzz_stack: FuzzStack,
    parent: Drawn,
    size: Drawn,
    token: TokenRecipe,
    agent_id: Drawn,
    state: Drawn,
    start: Drawn,
    end: Drawn,
    who: str,
) -> None:
    request = ex.ListExecutionsRequest(
        parent=parent.value,
        page_size=size.value,
        page_token=token.make(fuzz_stack.tokens["ListExecutions"]),
        agent_id=agent_id.value,
        state=state.value,
        **_time_fields(start, end),
    )
    same_listing = (parent.value, agent_id.value, state.value, start.value, end.value) == (
        SEED_PARENT,
        "",
        0,
        None,
        None,
    )
    verdict = combine(
        *(d.verdict for d in (parent, size, agent_id, state, start, end)),
        window(start, end),
        token.verdict_for(same_listing),
    )
    check_call(fuzz_stack, EX + "ListExecutions", request, verdict, who)


@fuzz_settings
@given(
    parent=parents(SEED_OR_ANY),
    agent_id=checked("agent_id", AGENT_IDS),
    start=timestamps(),
    end=timestamps(),
    who=callers("app"),
)
@example(parent=ok(SEED_PARENT), agent_id=bad(""), start=NO_TIME, end=NO_TIME, who="app")
@example(parent=ok(SEED_PARENT), agent_id=bad("agent-a\n"), start=NO_TIME, end=NO_TIME, who="app")
@example(
    parent=ok(SEED_PARENT), agent_id=ok("agent-a"), start=NO_TIME, end=NO_TIME, who="execution"
)
def test_get_agent_stats(
    fuzz_stack: FuzzStack, parent: Drawn, agent_id: Drawn, start: Drawn, end: Drawn, who: str
) -> None:
    request = ex.GetAgentStatsRequest(
        parent=parent.value, agent_id=agent_id.value, **_time_fields(start, end)
    )
    verdict = combine(
        parent.verdict, agent_id.verdict, start.verdict, end.verdict, window(start, end)
    )
    check_call(fuzz_stack, EX + "GetAgentStats", request, verdict, who)


# --- TestApiKey ------------------------------------------------------------------------------


def _candidate_verdict(key: str) -> str:
    if len(key.encode()) > 4096:
        return INVALID
    return (
        VALID if key == "" or (key.isascii() and key.isprintable() and " " not in key) else EITHER
    )


CANDIDATES = st.one_of(st.just(""), API_KEYS, hostile(API_KEYS), st.just("k" * 4097)).map(
    lambda k: Drawn(k, _candidate_verdict(k))
)
# Only URLs that answer at once: the emulator, or a closed port on an allowlisted host.
TEST_URLS = base_urls(["", EMULATOR, f"{EMULATOR}/v1", "https://127.0.0.1:1"])
TEST = dict(parent=ok(SEED_PARENT), provider=ok(1), candidate=ok(""), base_url=ok(""), who="app")


@fuzz_settings
@given(
    parent=parents(SEED_OR_ANY),
    provider=PROVIDERS,
    candidate=CANDIDATES,
    base_url=TEST_URLS,
    who=callers("app"),
)
@example(**{**TEST, "candidate": ok("sk-candidate-0123456789"), "base_url": bad(f"{EMULATOR}\n")})
@example(
    **{**TEST, "candidate": ok("sk-candidate-0123456789"), "base_url": bad("https://10.0.0.1")}
)
@example(**{**TEST, "candidate": Drawn("sk-candidate\n", EITHER), "base_url": ok(EMULATOR)})
@example(**{**TEST, "candidate": Drawn("sk-\x00candidate", EITHER), "base_url": ok(EMULATOR)})
@example(**{**TEST, "provider": bad(0)})
@example(**{**TEST, "who": "admin"})
def test_test_api_key(
    fuzz_stack: FuzzStack,
    parent: Drawn,
    provider: Drawn,
    candidate: Drawn,
    base_url: Drawn,
    who: str,
) -> None:
    request = ex.TestApiKeyRequest(
        parent=parent.value,
        provider=provider.value,
        candidate_api_key=candidate.value,
        base_url=fuzz_stack.with_emulator(base_url.value),
    )
    verdict = combine(parent.verdict, provider.verdict, candidate.verdict, base_url.verdict)
    check_call(fuzz_stack, EX + "TestApiKey", request, verdict, who, secret=candidate.value)
