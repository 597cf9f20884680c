"""The provider side's floor: what streaming the bench's 20-event completion from the emulator
costs a client process alone, 128 requests in flight, at three depths:

- aiohttp: a bare `aiohttp.ClientSession`, reading the body as it arrives;
- httpx: the execution service's own client (`provider_http_client`: httpx over aiohttp's
  pool, egress checks), reading the body as it arrives;
- provider call: the service's whole provider layer (`stream_chat`: the request built, SSE
  decoded, OpenAI's chunks parsed, deltas merged) on that client.

Each runs in a process of its own that measures its CPU per request over the window; the
emulator runs in another. The gaps between the rows are what each layer costs an execution.

`python -m bench.http_floor client URL DEPTH SECONDS` runs one (the bench starts it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from bench.load import closed_loop_in_process, floor_in_subprocess
from bench.stack import free_port, wait_listening

IN_FLIGHT = 128
DEPTHS = ("aiohttp", "httpx", "provider call")


async def _request_maker(url: str, depth: str) -> Callable[[], Awaitable[None]]:
    # The execution bench's request, as its time-to-first-token baseline sends it.
    from bench.execution_bench import API_KEY, DIRECT_BODY, DIRECT_HEADERS, MODEL, PROMPT

    if depth == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()

        async def bare() -> None:
            async with session.post(
                f"{url}/v1/chat/completions", json=DIRECT_BODY, headers=DIRECT_HEADERS
            ) as response:
                async for _ in response.content.iter_any():
                    pass

        return bare

    from execution_service.http_transport import provider_http_client
    from service_kit.egress import EgressPolicy

    client = provider_http_client(
        connect_timeout=5.0, read_timeout=30.0, egress=EgressPolicy.parse("127.0.0.1")
    )
    if depth == "httpx":

        async def httpx_only() -> None:
            async with client.stream(
                "POST", f"{url}/v1/chat/completions", json=DIRECT_BODY, headers=DIRECT_HEADERS
            ) as response:
                async for _ in response.aiter_bytes():
                    pass

        return httpx_only

    from execution_service.providers import get_provider
    from execution_service.providers.base import ChatMessage, ChatRequest
    from execution_service.providers.call import stream_chat
    from service_kit.secret import Secret

    provider, key = get_provider("openai"), Secret(API_KEY)
    request = ChatRequest(model=MODEL, messages=(ChatMessage("user", PROMPT),))

    async def provider_call() -> None:
        events = stream_chat(
            client, provider, request, key, base_url=url, default_max_tokens=1024, deadline=None
        )
        async with aclosing(events):
            async for _ in events:
                pass

    return provider_call


async def client(url: str, depth: str, seconds: float) -> dict[str, float]:
    request = await _request_maker(url, depth)
    return await closed_loop_in_process(request, concurrency=IN_FLIGHT, seconds=seconds)


def _measure(url: str, depth: str, seconds: float) -> str:
    result = floor_in_subprocess("bench.http_floor", "client", url, depth, seconds)
    calls = result["calls"]
    return (
        f"      {depth:<14} {calls / seconds:6.0f} requests/s, "
        f"client CPU {1e3 * result['cpu'] / max(calls, 1):.2f} ms/request"
    )


def run(seconds: float, behaviours: dict[str, tuple[str, ...]]) -> list[str]:
    lines = [
        "(e) the provider side alone: one client process streaming the same 20-event answer",
        f"    from the emulator, {IN_FLIGHT} in flight",
    ]
    for behaviour, emulator_args in behaviours.items():
        lines.append(f"    provider: {behaviour}")
        port = free_port()
        emulator = subprocess.Popen(
            [sys.executable, "-m", "provider_emulator", "--port", str(port), *emulator_args],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_listening(port)
            url = f"http://127.0.0.1:{port}"
            lines += [_measure(url, depth, seconds) for depth in DEPTHS]
        finally:
            emulator.kill()
            emulator.wait()
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        import uvloop

        url, depth, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
        print(json.dumps(uvloop.run(client(url, depth, seconds))))
    else:
        from bench.execution_bench import BEHAVIOURS

        print("\n".join(run(5.0, BEHAVIOURS)))
