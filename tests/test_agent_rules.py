"""Pure tests of the agents domain rules (execution_service.agents): update masks, etags,
the page-token cursor and the structured-output fit of an agent's routes. No I/O."""

from __future__ import annotations

import pytest

from execution_service.agents import (
    AGENT_CURSOR,
    UPDATABLE_FIELDS,
    AgentSpec,
    Route,
    new_etag,
    structured_output_fit,
)
from execution_service.field_masks import mask_fields
from execution_service.schemas import JsonSchema
from service_kit.errors import InvalidArgument
from service_kit.pagination import page_request, page_token


def update_fields(paths: list[str]) -> frozenset[str]:
    return mask_fields(paths, UPDATABLE_FIELDS)


def test_an_empty_mask_or_star_means_every_updatable_field() -> None:
    assert update_fields([]) == frozenset(UPDATABLE_FIELDS)
    assert update_fields(["*"]) == frozenset(UPDATABLE_FIELDS)
    assert update_fields(["labels", "routes"]) == {"labels", "routes"}


@pytest.mark.parametrize(
    ("paths", "fields"),
    [
        (["name"], ["update_mask.paths[0]"]),
        (["labels", "create_time", "etag"], ["update_mask.paths[1]", "update_mask.paths[2]"]),
        (["routes[0].model"], ["update_mask.paths[0]"]),
        (["labels", "*"], ["update_mask.paths[1]"]),
    ],
)
def test_other_mask_paths_are_refused_one_violation_each(
    paths: list[str], fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        update_fields(paths)
    assert [v.field for v in caught.value.violations] == fields


def test_etags_come_from_the_given_randomness() -> None:
    assert new_etag(lambda n: bytes(range(n))) == "000102030405060708090a0b"
    assert new_etag() != new_etag()


def test_the_page_cursor_holds_a_checked_agent_id() -> None:
    token = page_token({"id": "bot-7"}, query="workspaces/a", cursor=AGENT_CURSOR)
    page = page_request(10, token, query="workspaces/a", cursor=AGENT_CURSOR)
    assert page.cursor == {"id": "bot-7"}
    forged = page_token({"id": "no spaces allowed"}, query="workspaces/a", cursor=AGENT_CURSOR)
    with pytest.raises(InvalidArgument):
        page_request(10, forged, query="workspaces/a", cursor=AGENT_CURSOR)


def test_the_output_schema_must_fit_every_routes_provider() -> None:
    schema = JsonSchema.of(
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0}},
            "required": ["n"],
            "additionalProperties": False,
        }
    )
    openai = AgentSpec(routes=(Route("openai", "gpt-4o-mini"),), output_schema=schema)
    anthropic = AgentSpec(routes=(Route("anthropic", "claude-x"),), output_schema=schema)
    assert structured_output_fit(openai) == []
    [found] = structured_output_fit(anthropic)
    assert found.field == "agent.output_schema.properties.n.minimum"
    assert structured_output_fit(AgentSpec(routes=anthropic.routes)) == []  # free text
