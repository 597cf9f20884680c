"""RevealApiKey (database read, decryption, audit insert) next to a trivial method on the
same server (grpc.health.v1 Check), over mTLS, at 1, 16 and 64 calls in flight, with the
vault's and PostgreSQL's CPU per call."""

from __future__ import annotations

import contextlib
import functools

from bench.load import LoadResult, run_load
from bench.sampling import sampled
from bench.stack import running_stack, secure_channel
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc

KEY_NAME = "workspaces/bench/apiKeys/openai"


async def health_call(port: int):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(secure_channel(port, "execution"))
    request = health_pb2.HealthCheckRequest()

    async def call() -> None:
        await stub.Check(request)

    return call


async def reveal_call(port: int):
    stub = kv_grpc.KeyVaultServiceStub(secure_channel(port, "execution"))
    request = kv.RevealApiKeyRequest(name=KEY_NAME)

    async def call() -> None:
        await stub.RevealApiKey(request)

    return call


async def run(seconds: float, *, profile: bool = False) -> list[str]:
    lines = ["## Key vault: RevealApiKey vs a trivial method (health Check), mTLS, 1 channel"]
    async with running_stack(with_execution=False) as stack:
        async with secure_channel(stack.vault_port, "app") as ch:
            await kv_grpc.KeyVaultServiceStub(ch).SetApiKey(
                kv.SetApiKeyRequest(name=KEY_NAME, api_key="sk-bench-0123456789abcdef")
            )
        for inflight in (1, 16, 64):
            results: dict[str, LoadResult] = {}
            for label, factory in (("health Check", health_call), ("RevealApiKey", reveal_call)):
                sampling: list[str] = []
                with (
                    sampled(stack.pids["keyvault"], seconds, sampling)
                    if profile and inflight == 16
                    else contextlib.nullcontext()
                ):
                    results[label] = result = run_load(
                        functools.partial(factory, stack.vault_port),
                        concurrency=inflight,
                        seconds=seconds,
                        watch={
                            n: p for n, p in stack.pids.items() if n in ("keyvault", "postgres")
                        },
                    )
                lines.append(result.line(f"{label} @ {inflight} in flight"))
                # CPU per call is far steadier than calls per second on a shared machine.
                lines.append(f"    CPU: {result.cpu_line()}")
                lines += sampling
            ratio = results["RevealApiKey"].rate / results["health Check"].rate
            lines.append(f"{'  RevealApiKey / trivial':<44} {ratio:>9.0%}")
    return lines
