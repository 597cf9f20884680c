"""The request hash a request id is held to: what it covers and what it leaves out. Pure."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clients._types import struct
from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from execution_service.plan import decode, request_hash

INPUT = {"question": "Where is my order?", "customer": {"email": "ana@example.com", "n": 3}}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def ad_hoc(**fields: Any) -> pb.ExecuteRequest:
    base: dict[str, Any] = dict(
        parent="workspaces/ws1",
        agent_id="bot",
        provider=kv_res.PROVIDER_OPENAI,
        model="gpt-4o-mini",
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="Hello")],
        request_id="r-1",
    )
    return pb.ExecuteRequest(**{**base, **fields})


def by_agent(**fields: Any) -> pb.ExecuteRequest:
    base: dict[str, Any] = dict(
        parent="workspaces/ws1", agent="workspaces/ws1/agents/bot", request_id="r-1"
    )
    if "input_json" not in fields:
        base["input"] = struct(INPUT)
    return pb.ExecuteRequest(**{**base, **fields})


def hash_of(request: pb.ExecuteRequest) -> str:
    found = decode(request).request_hash
    assert found is not None
    return found


def test_the_hash_is_sha256_of_the_canonical_json_of_the_request_as_decoded() -> None:
    request = ad_hoc(labels={"team": "core"}, generation_config=res.GenerationConfig(top_p=0.5))
    form = {
        "agent_id": "bot",
        "generation_config": {"top_p": 0.5},
        "labels": {"team": "core"},
        "messages": [{"content": "Hello", "role": "user"}],
        "model": "gpt-4o-mini",
        "parent": "workspaces/ws1",
        "provider": "openai",
    }
    canonical = json.dumps(form, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hash_of(request) == hashlib.sha256(canonical.encode()).hexdigest()
    assert request_hash(form) == hash_of(request)

    agent_form = {
        "agent": "workspaces/ws1/agents/bot",
        "input": INPUT,
        "labels": {},
        "parent": "workspaces/ws1",
    }
    assert hash_of(by_agent()) == request_hash(agent_form)


def test_the_hash_is_the_same_in_another_process() -> None:
    """No per-process salt (Python's str hash is salted): a replica or a later process
    computes the same hash for the same request."""
    code = (
        "from tests.test_request_hash import ad_hoc, by_agent, hash_of; "
        "print(hash_of(ad_hoc(labels={'a': '1', 'b': '2'})), hash_of(by_agent()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    here = f"{hash_of(ad_hoc(labels={'b': '2', 'a': '1'}))} {hash_of(by_agent())}"
    assert done.stdout.strip() == here


def test_what_means_the_same_hashes_the_same() -> None:
    assert hash_of(ad_hoc(labels={"a": "1", "b": "2"})) == hash_of(
        ad_hoc(labels={"b": "2", "a": "1"})
    )
    labels = {"a": "1", "b": "2"}
    assert request_hash({"labels": labels}) == request_hash(
        {"labels": dict(reversed(labels.items()))}
    )
    # The request id is what is being checked, not part of the request.
    assert hash_of(ad_hoc(request_id="r-1")) == hash_of(ad_hoc(request_id="r-2"))
    # A generation config sent empty is no generation config.
    assert hash_of(ad_hoc(generation_config=res.GenerationConfig())) == hash_of(ad_hoc())
    # An agent's input: a Struct, or the same JSON as text in any key order and spacing.
    text = json.dumps(
        {"customer": {"n": 3, "email": "ana@example.com"}, "question": INPUT["question"]}, indent=2
    )
    assert hash_of(by_agent(input_json=text)) == hash_of(by_agent())
    assert hash_of(by_agent(input_json=json.dumps(INPUT))) == hash_of(by_agent())


def test_an_input_counts_as_the_json_the_model_gets() -> None:
    assert hash_of(by_agent(input_json='{"n": 1.5}')) == hash_of(by_agent(input=struct({"n": 1.5})))
    # JSON text keeps its numbers as written: `1.0` is not the model's `1`.
    assert hash_of(by_agent(input_json='{"n": 1.0}')) != hash_of(by_agent(input=struct({"n": 1})))
    # An escaped lone surrogate in JSON text is hashed, not a failure.
    assert hash_of(by_agent(input_json='{"q": "\\ud800"}')) != hash_of(
        by_agent(input_json='{"q": ""}')
    )


BASE_AD_HOC = hash_of(ad_hoc())


@pytest.mark.parametrize(
    "changed",
    [
        ad_hoc(parent="workspaces/ws2"),
        ad_hoc(agent_id="bot-2"),
        ad_hoc(provider=kv_res.PROVIDER_ANTHROPIC),
        ad_hoc(model="gpt-4o"),
        ad_hoc(messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="Hello!")]),
        ad_hoc(messages=[res.Message(role=res.MESSAGE_ROLE_ASSISTANT, content="Hello")]),
        ad_hoc(
            messages=[
                res.Message(role=res.MESSAGE_ROLE_SYSTEM, content="Be brief."),
                res.Message(role=res.MESSAGE_ROLE_USER, content="Hello"),
            ]
        ),
        ad_hoc(generation_config=res.GenerationConfig(max_tokens=10)),
        ad_hoc(generation_config=res.GenerationConfig(temperature=0.0)),
        ad_hoc(generation_config=res.GenerationConfig(stop_sequences=["END"])),
        ad_hoc(output_schema=struct(SCHEMA)),
        ad_hoc(labels={"team": "core"}),
    ],
    ids=lambda request: str(request).replace("\n", " ")[:60],
)
def test_every_field_of_an_ad_hoc_request_counts(changed: pb.ExecuteRequest) -> None:
    assert hash_of(changed) != BASE_AD_HOC


@pytest.mark.parametrize(
    "changed",
    [
        by_agent(agent="workspaces/ws1/agents/bot-2"),
        by_agent(input=struct({**INPUT, "question": "Where is my other order?"})),
        by_agent(input_json="[1, 2]"),
        by_agent(labels={"team": "core"}),
    ],
    ids=["agent", "input", "input_json", "labels"],
)
def test_every_field_of_an_execute_by_agent_counts(changed: pb.ExecuteRequest) -> None:
    assert hash_of(changed) != hash_of(by_agent())


def test_no_request_id_no_hash() -> None:
    assert decode(ad_hoc(request_id="")).request_hash is None
    assert decode(by_agent(request_id="")).request_hash is None
