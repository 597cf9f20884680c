"""The control plane over HTTP, authentication, validation and the models endpoint."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from emulator_helpers import (
    ANTHROPIC_KEY,
    EXPECTED_INPUT_TOKENS,
    OPENAI_KEY,
    anthropic_body,
    anthropic_headers,
    openai_body,
    openai_headers,
)

from provider_emulator import RunningEmulator, key_fingerprint, start_emulator


async def chat(
    http: httpx.AsyncClient, emulator: RunningEmulator, key: str = OPENAI_KEY, **body: object
) -> httpx.Response:
    return await http.post(
        emulator.base_url + "/v1/chat/completions",
        json={**openai_body(), **body},
        headers=openai_headers(key),
    )


async def messages(
    http: httpx.AsyncClient, emulator: RunningEmulator, key: str = ANTHROPIC_KEY, **body: object
) -> httpx.Response:
    return await http.post(
        emulator.base_url + "/v1/messages",
        json={**anthropic_body(), **body},
        headers=anthropic_headers(key),
    )


async def test_script_over_http(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    control = emulator.base_url + "/_emulator/script"
    queued = await http.post(
        control,
        json={
            "key": OPENAI_KEY,
            "steps": [
                {"status": 429, "headers": {"retry-after": "1"}},
                {"status": 500},
            ],
        },
    )
    assert queued.json() == {"queued": 2, "pending": 2}
    pending = await http.get(control, params={"key": OPENAI_KEY})
    assert pending.json() == {"pending": 2}
    first, second, third = [(await chat(http, emulator)).status_code for _ in range(3)]
    assert (first, second, third) == (429, 500, 200)
    assert (await http.get(control, params={"key": OPENAI_KEY})).json() == {"pending": 0}


async def test_clearing_scripts(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    control = emulator.base_url + "/_emulator/script"
    await http.post(control, json={"steps": [{"status": 500}]})
    assert (await http.delete(control)).status_code == 200
    assert (await chat(http, emulator)).status_code == 200


@pytest.mark.parametrize(
    "steps",
    [
        [{"stauts": 429}],
        [{"status": "429"}],
        [{"cut_after_chunks": 1, "malformed_after_chunks": 1}],
        [{"chunk_delay_ms": -1}],
        ["not an object"],
    ],
)
async def test_bad_steps_are_rejected(
    emulator: RunningEmulator, http: httpx.AsyncClient, steps: list[object]
) -> None:
    response = await http.post(emulator.base_url + "/_emulator/script", json={"steps": steps})
    assert response.status_code == 400
    assert "error" in response.json()
    assert emulator.state.pending_steps() == 0


async def test_revoke_and_restore_over_http(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    await http.post(emulator.base_url + "/_emulator/keys/revoke", json={"key": OPENAI_KEY})
    await http.post(emulator.base_url + "/_emulator/keys/revoke", json={"key": ANTHROPIC_KEY})
    revoked_openai = await chat(http, emulator)
    revoked_anthropic = await messages(http, emulator)
    assert revoked_openai.status_code == 401
    assert revoked_openai.json()["error"]["code"] == "invalid_api_key"
    assert revoked_openai.json()["error"]["type"] == "invalid_request_error"
    assert set(revoked_openai.json()["error"]) == {"message", "type", "param", "code"}
    assert OPENAI_KEY not in revoked_openai.json()["error"]["message"]
    assert revoked_anthropic.status_code == 401
    assert revoked_anthropic.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": revoked_anthropic.headers["request-id"],
    }
    assert revoked_anthropic.headers["x-should-retry"] == "false"
    await http.post(emulator.base_url + "/_emulator/keys/restore", json={"key": OPENAI_KEY})
    assert (await chat(http, emulator)).status_code == 200
    assert (await messages(http, emulator)).status_code == 401


async def test_missing_or_empty_keys_are_rejected(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    url = emulator.base_url
    no_auth = await http.post(url + "/v1/chat/completions", json=openai_body())
    empty = await http.post(
        url + "/v1/chat/completions", json=openai_body(), headers={"Authorization": "Bearer"}
    )
    no_key = await http.post(
        url + "/v1/messages", json=anthropic_body(), headers={"anthropic-version": "2023-06-01"}
    )
    assert (no_auth.status_code, empty.status_code, no_key.status_code) == (401, 401, 401)
    assert no_key.json()["error"]["message"] == "x-api-key header is required"


async def test_allow_list(http: httpx.AsyncClient) -> None:
    async with start_emulator(accepted_keys=["sk-only-this-one"]) as emulator:
        assert (await chat(http, emulator, key="sk-only-this-one")).status_code == 200
        assert (await chat(http, emulator, key="sk-another")).status_code == 401


async def test_models_endpoint_in_both_shapes(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    url = emulator.base_url + "/v1/models"
    openai_models = await http.get(url, headers=openai_headers())
    anthropic_models = await http.get(url, headers=anthropic_headers())
    assert openai_models.status_code == 200
    assert openai_models.json()["object"] == "list"
    assert {m["object"] for m in openai_models.json()["data"]} == {"model"}
    assert anthropic_models.status_code == 200
    assert anthropic_models.json()["has_more"] is False
    assert {m["type"] for m in anthropic_models.json()["data"]} == {"model"}
    emulator.state.revoke(OPENAI_KEY)
    emulator.state.revoke(ANTHROPIC_KEY)
    bad_openai = await http.get(url, headers=openai_headers())
    bad_anthropic = await http.get(url, headers=anthropic_headers())
    assert bad_openai.status_code == bad_anthropic.status_code == 401
    assert bad_openai.json()["error"]["code"] == "invalid_api_key"
    assert bad_anthropic.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, 'role "system"'),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ],
)
async def test_anthropic_validation(
    emulator: RunningEmulator, http: httpx.AsyncClient, body: dict[str, object], fragment: str
) -> None:
    payload = {k: v for k, v in {**anthropic_body(), **body}.items() if v is not None}
    response = await http.post(
        emulator.base_url + "/v1/messages", json=payload, headers=anthropic_headers()
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fragment in response.json()["error"]["message"]


async def test_anthropic_version_header_required(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        emulator.base_url + "/v1/messages",
        json=anthropic_body(),
        headers={"x-api-key": ANTHROPIC_KEY},
    )
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"messages": []}, "empty_array"),
        ({"messages": None}, "missing_required_parameter"),
        ({"max_tokens": 0}, "integer_below_min_value"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_value"),
        ({"stream": False, "stream_options": {"include_usage": True}}, None),
    ],
)
async def test_openai_validation(
    emulator: RunningEmulator, http: httpx.AsyncClient, body: dict[str, object], code: str | None
) -> None:
    payload = {k: v for k, v in {**openai_body(), **body}.items() if v is not None}
    response = await http.post(
        emulator.base_url + "/v1/chat/completions", json=payload, headers=openai_headers()
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


async def test_invalid_json_is_a_400(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    response = await http.post(
        emulator.base_url + "/v1/chat/completions",
        content=b"{nope",
        headers={**openai_headers(), "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_requests_listing_filter_and_clear(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    await chat(http, emulator)
    await messages(http, emulator)
    url = emulator.base_url + "/_emulator/requests"
    listed = (await http.get(url)).json()
    assert [r["provider"] for r in listed] == ["openai", "anthropic"]
    assert listed[0]["headers"]["authorization"] == "<redacted ...0001>"
    assert listed[0]["key_sha256"] == key_fingerprint(OPENAI_KEY)
    assert listed[0]["usage"]["input_tokens"] == EXPECTED_INPUT_TOKENS
    assert OPENAI_KEY not in (await http.get(url)).text
    only_anthropic = (await http.get(url, params={"key": ANTHROPIC_KEY})).json()
    assert [r["path"] for r in only_anthropic] == ["/v1/messages"]
    assert len((await http.get(url, params={"limit": "1"})).json()) == 1
    assert (await http.delete(url)).status_code == 200
    assert (await http.get(url)).json() == []


async def test_reset_forgets_everything(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    emulator.state.revoke(OPENAI_KEY)
    emulator.state.script({"status": 500})
    emulator.state.set_cache_tokens(read=10)
    await chat(http, emulator)
    assert (await http.post(emulator.base_url + "/_emulator/reset")).status_code == 200
    assert len(emulator.state.requests) == 0
    response = await chat(http, emulator)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_cache_figures_over_http(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    await http.post(
        emulator.base_url + "/_emulator/cache",
        json={"key": ANTHROPIC_KEY, "cache_read_tokens": 30, "cache_write_tokens": 12},
    )
    usage = (await messages(http, emulator)).json()["usage"]
    assert (
        usage["input_tokens"],
        usage["cache_read_input_tokens"],
        usage["cache_creation_input_tokens"],
    ) == (EXPECTED_INPUT_TOKENS, 30, 12)
    other = (await messages(http, emulator, key="sk-other")).json()["usage"]
    assert other["cache_read_input_tokens"] == 0
    emulator.state.script({"cache_read_tokens": 1, "cache_write_tokens": 2}, key=ANTHROPIC_KEY)
    scripted = (await messages(http, emulator)).json()["usage"]
    assert (scripted["cache_read_input_tokens"], scripted["cache_creation_input_tokens"]) == (1, 2)


async def test_health(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    response = await http.get(emulator.base_url + "/_emulator/health")
    assert response.json() == {"status": "ok"}


async def test_stop_with_a_stream_in_flight(http: httpx.AsyncClient) -> None:
    emulator = await start_emulator(shutdown_timeout_s=0.2)
    emulator.state.script({"delay_before_first_ms": 60_000})
    request = asyncio.create_task(
        http.post(
            emulator.base_url + "/v1/messages",
            json=anthropic_body(stream=True),
            headers=anthropic_headers(),
        )
    )
    await emulator.state.wait_for(lambda s: len(s.requests) == 1)
    await asyncio.wait_for(emulator.stop(), timeout=30)
    await emulator.stop()  # idempotent
    with pytest.raises(httpx.HTTPError):
        await request
    assert emulator.state.requests[0].outcome == "disconnected"
