"""The official `openai` and `anthropic` SDKs parse the emulator's answers and errors."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from emulator_helpers import (
    ANTHROPIC_KEY,
    CHUNKS,
    EXPECTED_INPUT_TOKENS,
    OPENAI_KEY,
    expected_text,
)

from provider_emulator import RunningEmulator

OPENAI_MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the world"},
]
ANTHROPIC_MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the world"}]


def openai_client(emulator: RunningEmulator, key: str = OPENAI_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emulator.base_url + "/v1", api_key=key, max_retries=0)


def anthropic_client(
    emulator: RunningEmulator, key: str = ANTHROPIC_KEY
) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=emulator.base_url, api_key=key, max_retries=0)


async def test_openai_non_streaming(emulator: RunningEmulator) -> None:
    async with openai_client(emulator) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=OPENAI_MESSAGES
        )
    assert completion.choices[0].message.content == expected_text()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == EXPECTED_INPUT_TOKENS
    assert completion.usage.completion_tokens == CHUNKS
    assert completion.usage.total_tokens == EXPECTED_INPUT_TOKENS + CHUNKS


async def test_openai_streaming_with_usage(emulator: RunningEmulator) -> None:
    emulator.state.set_cache_tokens(read=4)
    async with openai_client(emulator) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=OPENAI_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == EXPECTED_INPUT_TOKENS + 4
    assert last.usage.completion_tokens == CHUNKS
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 4
    assert len({c.id for c in chunks}) == 1


async def test_openai_stream_helper(emulator: RunningEmulator) -> None:
    async with (
        openai_client(emulator) as client,
        client.chat.completions.stream(
            model="gpt-4o-mini", messages=OPENAI_MESSAGES, stream_options={"include_usage": True}
        ) as stream,
    ):
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == expected_text()
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == CHUNKS


async def test_openai_max_tokens_finishes_with_length(emulator: RunningEmulator) -> None:
    async with openai_client(emulator) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=OPENAI_MESSAGES,
            max_completion_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(
            model="gpt-4o-mini", messages=OPENAI_MESSAGES, max_tokens=3
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "word0 word1"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert whole.choices[0].message.content == "word0 word1 word2"
    assert whole.choices[0].finish_reason == "length"


async def test_anthropic_non_streaming(emulator: RunningEmulator) -> None:
    emulator.state.set_cache_tokens(read=7, write=5)
    async with anthropic_client(emulator) as client:
        message = await client.messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=100,
            system="You are terse.",
            messages=ANTHROPIC_MESSAGES,
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text()
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == EXPECTED_INPUT_TOKENS
    assert message.usage.output_tokens == CHUNKS
    assert message.usage.cache_read_input_tokens == 7
    assert message.usage.cache_creation_input_tokens == 5


async def test_anthropic_stream_helper(emulator: RunningEmulator) -> None:
    async with (
        anthropic_client(emulator) as client,
        client.messages.stream(
            model="claude-3-5-sonnet-20241022",
            max_tokens=100,
            system=[{"type": "text", "text": "You are terse."}],
            messages=ANTHROPIC_MESSAGES,
        ) as stream,
    ):
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == expected_text()
    assert len(pieces) == CHUNKS
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == EXPECTED_INPUT_TOKENS
    assert final.usage.output_tokens == CHUNKS


async def test_anthropic_max_tokens_stops_early(emulator: RunningEmulator) -> None:
    async with (
        anthropic_client(emulator) as client,
        client.messages.stream(
            model="claude-3-5-sonnet-20241022", max_tokens=3, messages=ANTHROPIC_MESSAGES
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3
    assert final.content[0].type == "text"
    assert final.content[0].text == "word0 word1 word2"


async def test_revoked_key_raises_authentication_error(emulator: RunningEmulator) -> None:
    emulator.state.revoke(OPENAI_KEY)
    emulator.state.revoke(ANTHROPIC_KEY)
    async with openai_client(emulator) as oai, anthropic_client(emulator) as ant:
        with pytest.raises(openai.AuthenticationError) as oai_err:
            await oai.chat.completions.create(model="gpt-4o-mini", messages=OPENAI_MESSAGES)
        with pytest.raises(anthropic.AuthenticationError) as ant_err:
            await ant.messages.create(
                model="claude-3-5-sonnet-20241022", max_tokens=10, messages=ANTHROPIC_MESSAGES
            )
    assert oai_err.value.code == "invalid_api_key"
    assert ant_err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert ant_err.value.request_id is not None


async def test_scripted_429_raises_rate_limit_error(emulator: RunningEmulator) -> None:
    emulator.state.script(
        {"status": 429, "error_code": "rate_limit_exceeded", "headers": {"retry-after": "3"}},
        key=OPENAI_KEY,
    )
    emulator.state.script({"status": 429}, key=ANTHROPIC_KEY)
    async with openai_client(emulator) as oai, anthropic_client(emulator) as ant:
        with pytest.raises(openai.RateLimitError) as oai_err:
            await oai.chat.completions.create(model="gpt-4o-mini", messages=OPENAI_MESSAGES)
        with pytest.raises(anthropic.RateLimitError) as ant_err:
            await ant.messages.create(
                model="claude-3-5-sonnet-20241022", max_tokens=10, messages=ANTHROPIC_MESSAGES
            )
        # One-shot: the next requests succeed.
        ok = await oai.chat.completions.create(model="gpt-4o-mini", messages=OPENAI_MESSAGES)
    assert oai_err.value.code == "rate_limit_exceeded"
    assert oai_err.value.response.headers["retry-after"] == "3"
    assert ant_err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert ok.choices[0].message.content == expected_text()


async def test_anthropic_overloaded_error_event_mid_stream(emulator: RunningEmulator) -> None:
    emulator.state.script({"anthropic_error_after_chunks": 2, "error_type": "overloaded_error"})
    seen: list[str] = []
    async with anthropic_client(emulator) as client:
        with pytest.raises(anthropic.APIStatusError) as err:
            async with client.messages.stream(
                model="claude-3-5-sonnet-20241022", max_tokens=100, messages=ANTHROPIC_MESSAGES
            ) as stream:
                async for text in stream.text_stream:
                    seen.append(text)
    assert "".join(seen) == "word0 word1"
    assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert emulator.state.requests[-1].outcome == "stream_error"


async def test_openai_error_event_mid_stream(emulator: RunningEmulator) -> None:
    emulator.state.script({"error_after_chunks": 1, "error_type": "server_error"})
    async with openai_client(emulator) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=OPENAI_MESSAGES, stream=True
        )
        seen: list[str] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "word0"


async def test_anthropic_rejects_system_role_in_messages(emulator: RunningEmulator) -> None:
    async with anthropic_client(emulator) as client:
        with pytest.raises(anthropic.BadRequestError) as err:
            await client.messages.create(
                model="claude-3-5-sonnet-20241022",
                max_tokens=10,
                messages=[{"role": "system", "content": "x"}, *ANTHROPIC_MESSAGES],  # type: ignore[list-item]
            )
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "system" in err.value.message


async def test_cut_stream_is_a_connection_error_for_the_sdk(emulator: RunningEmulator) -> None:
    emulator.state.script({"cut_after_chunks": 2})
    seen: list[str] = []
    async with openai_client(emulator) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=OPENAI_MESSAGES, stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            async for chunk in stream:
                seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "word0 word1"
    assert emulator.state.requests[-1].outcome == "cut"
