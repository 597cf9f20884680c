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

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from bench.stack import free_port

IN_FLIGHT = 128
WARMUP = 1.0
DEPTHS = ("aiohttp", "httpx", "provider call")
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-0123456789abcdef"
PROMPT = "Summarise the state of the fleet in one line"
BODY = {
    "model": MODEL,
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": PROMPT}],
}
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


async def _request_maker(url: str, depth: str) -> Callable[[], Awaitable[None]]:
    if depth == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()

        async def bare() -> None:
            async with session.post(
                f"{url}/v1/chat/completions", json=BODY, headers=HEADERS
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
                "POST", f"{url}/v1/chat/completions", json=BODY, headers=HEADERS
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
    calls = 0
    measuring = False
    stop_at = time.monotonic() + WARMUP + seconds

    async def caller() -> None:
        nonlocal calls
        while time.monotonic() < stop_at:
            await request()
            calls += measuring

    async def window() -> tuple[float, int]:
        nonlocal measuring
        await asyncio.sleep(WARMUP)
        measuring, cpu0 = True, time.process_time()
        await asyncio.sleep(seconds)
        measuring = False
        return time.process_time() - cpu0, calls

    tasks = [asyncio.create_task(caller()) for _ in range(IN_FLIGHT)]
    cpu, counted = await window()
    await asyncio.gather(*tasks)
    return {"calls": counted, "cpu": cpu}


def _measure(url: str, depth: str, seconds: float) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "bench.http_floor", "client", url, depth, str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
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
            _wait_listening(port)
            url = f"http://127.0.0.1:{port}"
            lines += [_measure(url, depth, seconds) for depth in DEPTHS]
        finally:
            emulator.kill()
            emulator.wait()
    return lines


def _wait_listening(port: int) -> None:
    import socket

    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the emulator on port {port} did not start")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        import uvloop

        url, depth, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
        print(json.dumps(uvloop.run(client(url, depth, seconds))))
    else:
        from bench.execution_bench import BEHAVIOURS

        print("\n".join(run(5.0, BEHAVIOURS)))
