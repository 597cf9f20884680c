"""Scripted error answers that echo the request's key, as a careless endpoint might."""

from __future__ import annotations

import json

import httpx
from emulator_helpers import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    anthropic_body,
    anthropic_headers,
    openai_body,
    openai_headers,
)

from provider_emulator import RunningEmulator


async def test_error_message_and_plain_body_echo_the_key(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    steps = [
        {"status": 401, "error_message": "bad key {api_key}"},
        {"status": 404, "error_body": "no route for {api_key_lower}"},
    ]
    control = await http.post(
        emulator.base_url + "/_emulator/script", json={"key": OPENAI_KEY, "steps": steps}
    )
    assert control.json()["queued"] == 2

    url = emulator.base_url + "/v1/chat/completions"
    first = await http.post(url, json=openai_body(), headers=openai_headers(OPENAI_KEY))
    assert first.status_code == 401
    assert first.json()["error"]["message"] == f"bad key {OPENAI_KEY}"
    second = await http.post(url, json=openai_body(), headers=openai_headers(OPENAI_KEY))
    assert second.status_code == 404
    assert second.headers["content-type"].startswith("text/plain")
    assert second.text == f"no route for {OPENAI_KEY.lower()}"

    # The request log keeps the step as scripted: never the key it was filled with.
    log = (await http.get(emulator.base_url + "/_emulator/requests")).text
    assert OPENAI_KEY not in log and OPENAI_KEY.lower() not in log
    assert "{api_key}" in log


async def test_an_error_event_after_output_echoes_the_key(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script(
        {"error_after_chunks": 1, "error_message": "oops {api_key}"}, key=ANTHROPIC_KEY
    )
    answer = await http.post(
        emulator.base_url + "/v1/messages",
        json={**anthropic_body(), "stream": True},
        headers=anthropic_headers(ANTHROPIC_KEY),
    )
    error_events = [
        json.loads(line[len("data: ") :])
        for line in answer.text.splitlines()
        if line.startswith("data: ") and '"error"' in line
    ]
    assert error_events[-1]["error"]["message"] == f"oops {ANTHROPIC_KEY}"


async def test_a_non_string_error_body_is_refused(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    control = await http.post(
        emulator.base_url + "/_emulator/script", json={"steps": [{"status": 500, "error_body": 5}]}
    )
    assert control.status_code == 400
