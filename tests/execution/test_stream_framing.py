"""How the provider's bytes are framed must not change what is streamed and recorded.

Server-sent event lines may end with LF, CRLF or a lone CR, and a network read may end
anywhere: inside a multi-byte UTF-8 character, or between the CR and LF of one line ending.
The emulator produces each case on purpose; the execution service must stream and record
exactly the same text, usage and cost as for a plain LF stream read in whole events.
"""

from __future__ import annotations

import pytest

from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator import RunningEmulator, count_input_tokens
from tests.execution.support import (
    ANTHROPIC,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    openai_key,
    request,
    run,
)

# Two-, three- and four-byte characters, several in one chunk and at chunk edges.
TEXT = "Crème brûlée: 5 € — déjà vu 🍮🎉 naïve café ✓"
CHUNKS = 6
PROMPT = "Say hello to the team"
PROVIDERS = [
    pytest.param(OPENAI, "gpt-4o-mini", id="openai"),
    pytest.param(ANTHROPIC, "claude-3-5-sonnet-20241022", id="anthropic"),
]


async def _execute(
    stub: Stub,
    workspace: Workspace,
    emulator: RunningEmulator,
    provider: int,
    model: str,
    **framing: object,
) -> res.Execution:
    key = openai_key() if provider == OPENAI else anthropic_key()
    ws = await workspace(**{"openai" if provider == OPENAI else "anthropic": key})
    emulator.state.script({"text": TEXT, "chunks": CHUNKS, **framing}, key=key)
    outcome = await run(stub(), request(ws, provider, model, prompt=PROMPT))
    completed = outcome.completed
    # What was streamed is what was recorded.
    assert outcome.text == completed.output_text
    return completed


def _essentials(execution: res.Execution) -> tuple[object, ...]:
    return (
        execution.state,
        execution.output_text,
        execution.usage.input_tokens,
        execution.usage.output_tokens,
        execution.usage.estimated,
        execution.cost_nanos,
        execution.finish_reason,
        execution.attempts,
    )


@pytest.mark.parametrize(("provider", "model"), PROVIDERS)
@pytest.mark.parametrize("line_ending", ["crlf", "cr"])
async def test_crlf_and_cr_framed_streams_read_like_lf(
    execution_stub: Stub,
    workspace: Workspace,
    emulator: RunningEmulator,
    provider: int,
    model: str,
    line_ending: str,
) -> None:
    plain = await _execute(execution_stub, workspace, emulator, provider, model)
    # Once as one write, once an event per read with every CR LF pair cut across reads.
    whole = await _execute(
        execution_stub, workspace, emulator, provider, model, line_ending=line_ending
    )
    torn = await _execute(
        execution_stub,
        workspace,
        emulator,
        provider,
        model,
        line_ending=line_ending,
        chunk_delay_ms=5,
        split_writes_ms=2,
    )

    assert plain.state == res.EXECUTION_STATE_SUCCEEDED
    assert plain.output_text == TEXT
    assert plain.usage.input_tokens == count_input_tokens([{"content": PROMPT}])
    assert plain.usage.output_tokens == CHUNKS and not plain.usage.estimated
    assert _essentials(whole) == _essentials(plain)
    assert _essentials(torn) == _essentials(plain)


@pytest.mark.parametrize(("provider", "model"), PROVIDERS)
async def test_a_character_split_across_network_reads_arrives_whole(
    execution_stub: Stub,
    workspace: Workspace,
    emulator: RunningEmulator,
    provider: int,
    model: str,
) -> None:
    # Every multi-byte character reaches the service in two reads, 5 ms apart.
    torn = await _execute(execution_stub, workspace, emulator, provider, model, split_writes_ms=5)
    assert torn.state == res.EXECUTION_STATE_SUCCEEDED
    assert torn.output_text == TEXT
    assert "\ufffd" not in torn.output_text
    assert torn.usage.output_tokens == CHUNKS and not torn.usage.estimated
    assert torn.usage.input_tokens == count_input_tokens([{"content": PROMPT}])
