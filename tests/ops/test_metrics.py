"""The /metrics endpoints of both services, scraped over HTTP while real calls go through the
pair: each counter moves by what the calls did, statuses include aborts and cancellations.

Metrics are process-wide and these tests share the process with others, so every assertion
is about the change a test's own calls made (a later scrape minus an earlier one).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest

from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from keyvault_service.app import start_keyvault
from service_kit.metrics import metrics_host
from service_kit.tls import TlsFiles
from tests.execution.support import ANTHROPIC, error_info, openai_key, request, run
from tests.keyvault.conftest import keyring_of, vault_settings
from tests.ops.conftest import MeteredPair, Scrape, scrape, scrape_until, with_metrics_port

EXECUTE = {"grpc_service": "execution.v1.ExecutionService", "grpc_method": "Execute"}
REVEAL = {"grpc_service": "keyvault.v1.KeyVaultService", "grpc_method": "RevealApiKey"}
SONNET = "claude-3-5-sonnet-20241022"


def workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_an_execution_moves_its_counters(metered_pair: MeteredPair) -> None:
    pair, ws, key = metered_pair, workspace(), f"sk-ant-metrics-{uuid.uuid4().hex}"
    await pair.store_key(ws, "anthropic", key)
    pair.emulator.state.script({"cache_read_tokens": 11, "cache_write_tokens": 5}, key=key)
    ex_before = await scrape(pair.execution_metrics_port)
    kv_before = await scrape(pair.vault_metrics_port)

    outcome = await run(pair.execution_stub(), request(ws, ANTHROPIC, SONNET))

    done = outcome.completed
    assert done.state == res.EXECUTION_STATE_SUCCEEDED
    assert done.cost_nanos > 0
    ex = await scrape_until(
        pair.execution_metrics_port,
        lambda s: moved(ex_before, s, "grpc_server_handled_total", **EXECUTE, grpc_code="OK") > 0,
    )
    kv_after = await scrape(pair.vault_metrics_port)

    def ex_moved(name: str, **labels: str) -> float:
        return moved(ex_before, ex, name, **labels)

    assert ex_moved("grpc_server_handled_total", **EXECUTE, grpc_code="OK") == 1
    assert ex_moved("grpc_server_handling_seconds_count", **EXECUTE) == 1
    finished = {"provider": "anthropic", "state": "SUCCEEDED", "reason": ""}
    assert ex_moved("execution_executions_finished_total", **finished) == 1
    tokens = {"provider": "anthropic", "model": "claude-3-5-sonnet"}
    assert ex_moved("execution_tokens_total", **tokens, kind="input") == done.usage.input_tokens
    assert ex_moved("execution_tokens_total", **tokens, kind="output") == done.usage.output_tokens
    assert ex_moved("execution_tokens_total", **tokens, kind="cache_read") == 11
    assert ex_moved("execution_tokens_total", **tokens, kind="cache_write") == 5
    assert ex_moved("execution_cost_nanodollars_total", **tokens) == done.cost_nanos
    assert ex_moved("execution_provider_attempts_total", provider="anthropic") == 1
    ttft = "execution_time_to_first_token_seconds"
    assert ex_moved(f"{ttft}_count", provider="anthropic") == 1
    assert ex_moved(f"{ttft}_sum", provider="anthropic") == pytest.approx(
        done.time_to_first_token.ToTimedelta().total_seconds(), abs=0.002
    )
    assert ex_moved("execution_key_cache_lookups_total", result="miss") == 1
    assert ex_moved("execution_key_cache_lookups_total", result="hit") == 0
    assert ex.value("execution_executions_in_flight") == ex_before.value(
        "execution_executions_in_flight"
    )
    # The vault's side of the same execution: one audited reveal.
    assert moved(kv_before, kv_after, "keyvault_reveals_total", outcome="revealed") == 1
    assert moved(kv_before, kv_after, "grpc_server_handled_total", **REVEAL, grpc_code="OK") == 1

    # Again: the key now comes from the execution service's cache; the vault is not asked.
    again = await run(pair.execution_stub(), request(ws, ANTHROPIC, SONNET))
    assert again.completed.state == res.EXECUTION_STATE_SUCCEEDED
    ex2 = await scrape_until(
        pair.execution_metrics_port,
        lambda s: moved(ex, s, "grpc_server_handled_total", **EXECUTE, grpc_code="OK") > 0,
    )
    kv2 = await scrape(pair.vault_metrics_port)
    assert moved(ex, ex2, "execution_key_cache_lookups_total", result="hit") == 1
    assert moved(ex, ex2, "execution_key_cache_lookups_total", result="miss") == 0
    assert moved(kv_after, kv2, "keyvault_reveals_total", outcome="revealed") == 0


async def test_retries_are_counted_with_their_reason(metered_pair: MeteredPair) -> None:
    pair, ws, key = metered_pair, workspace(), openai_key()
    await pair.store_key(ws, "openai", key)
    pair.emulator.state.script({"status": 503}, key=key)
    before = await scrape(pair.execution_metrics_port)

    outcome = await run(pair.execution_stub(), request(ws))

    assert outcome.completed.attempts == 2
    after = await scrape_until(
        pair.execution_metrics_port,
        lambda s: moved(before, s, "grpc_server_handled_total", **EXECUTE, grpc_code="OK") > 0,
    )
    retries = {"provider": "openai", "reason": "PROVIDER_SERVER_ERROR"}
    assert moved(before, after, "execution_provider_retries_total", **retries) == 1
    assert moved(before, after, "execution_provider_attempts_total", provider="openai") == 2

    # A cached key the provider refuses is fetched again once: a retry for PROVIDER_AUTH_FAILED.
    pair.emulator.state.script({"status": 401, "error_code": "invalid_api_key"}, key=key)
    refetched = await run(pair.execution_stub(), request(ws))
    assert refetched.completed.state == res.EXECUTION_STATE_SUCCEEDED
    last = await scrape_until(
        pair.execution_metrics_port,
        lambda s: moved(after, s, "grpc_server_handled_total", **EXECUTE, grpc_code="OK") > 0,
    )
    auth = {"provider": "openai", "reason": "PROVIDER_AUTH_FAILED"}
    assert moved(after, last, "execution_provider_retries_total", **auth) == 1
    assert moved(after, last, "execution_key_cache_lookups_total", result="hit") == 1
    assert moved(after, last, "execution_key_cache_lookups_total", result="miss") == 1


async def test_failed_and_denied_calls_are_counted_with_their_status(
    metered_pair: MeteredPair,
) -> None:
    pair, ws = metered_pair, workspace()  # no key stored
    ex_before = await scrape(pair.execution_metrics_port)
    kv_before = await scrape(pair.vault_metrics_port)

    failed = await run(pair.execution_stub(), request(ws))
    assert failed.error is not None
    assert failed.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(failed.error).reason == "API_KEY_NOT_CONFIGURED"
    denied = await run(pair.execution_stub("admin"), request(ws))  # admin may not execute
    assert denied.error is not None
    assert denied.error.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # only the execution workload reveals
        await pair.vault_stub("app").RevealApiKey(
            kv.RevealApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai")
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    ex = await scrape_until(
        pair.execution_metrics_port,
        lambda s: moved(ex_before, s, "grpc_server_handling_seconds_count", **EXECUTE) >= 2,
    )
    kv_after = await scrape(pair.vault_metrics_port)
    assert moved(ex_before, ex, "grpc_server_handled_total", **EXECUTE, grpc_code="OK") == 0
    for code in ("FAILED_PRECONDITION", "PERMISSION_DENIED"):
        assert moved(ex_before, ex, "grpc_server_handled_total", **EXECUTE, grpc_code=code) == 1
    failure = {"provider": "openai", "state": "FAILED", "reason": "API_KEY_NOT_CONFIGURED"}
    assert moved(ex_before, ex, "execution_executions_finished_total", **failure) == 1
    assert moved(kv_before, kv_after, "keyvault_reveals_total", outcome="not_found") == 1
    assert moved(kv_before, kv_after, "keyvault_reveals_total", outcome="denied") == 1
    assert moved(kv_before, kv_after, "keyvault_reveals_total", outcome="revealed") == 0
    for code in ("NOT_FOUND", "PERMISSION_DENIED"):
        reveals = moved(kv_before, kv_after, "grpc_server_handled_total", **REVEAL, grpc_code=code)
        assert reveals == 1, code


async def test_a_cancelled_execution_is_counted_as_cancelled(metered_pair: MeteredPair) -> None:
    pair, ws, key = metered_pair, workspace(), openai_key()
    await pair.store_key(ws, "openai", key)
    pair.emulator.state.script({"chunk_delay_ms": 200}, key=key)
    before = await scrape(pair.execution_metrics_port)

    call = pair.execution_stub().Execute(request(ws))
    assert (await call.read()).WhichOneof("event") == "started"
    assert (await call.read()).WhichOneof("event") == "delta"
    in_flight = await scrape(pair.execution_metrics_port)
    call.cancel()

    cancelled = {"provider": "openai", "state": "CANCELLED", "reason": "CANCELLED"}
    after = await scrape_until(
        pair.execution_metrics_port,
        lambda s: (
            moved(before, s, "grpc_server_handled_total", **EXECUTE, grpc_code="CANCELLED") > 0
            and moved(before, s, "execution_executions_finished_total", **cancelled) > 0
        ),
    )
    assert moved(before, after, "grpc_server_handled_total", **EXECUTE, grpc_code="CANCELLED") == 1
    assert moved(before, after, "execution_executions_finished_total", **cancelled) == 1
    assert moved(before, in_flight, "execution_executions_in_flight") == 1
    assert moved(before, after, "execution_executions_in_flight") == 0


async def test_the_endpoint_listens_on_the_grpc_host_and_a_taken_port_fails_the_start(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> None:
    assert metrics_host("0.0.0.0:50051") == "0.0.0.0"
    assert metrics_host("127.0.0.1:50051") == "127.0.0.1"
    assert metrics_host("[::]:50051") == "::"
    assert metrics_host("localhost:0") == "localhost"

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = with_metrics_port(vault_settings(tls_for("keyvault"), keyring_of(1)), port)
        with pytest.raises(OSError, match=f"could not serve metrics on 127.0.0.1:{port}"):
            await start_keyvault(settings, await make_database("kv"))


def test_a_looked_up_child_is_the_labelled_series() -> None:
    """`metrics.child` caches what `labels` returns: the same series, counted once."""
    from service_kit import metrics

    series = metrics.child(metrics.EXECUTIONS_FINISHED, "openai", "SUCCEEDED", "child-test")
    assert series is metrics.child(metrics.EXECUTIONS_FINISHED, "openai", "SUCCEEDED", "child-test")
    before = metrics.EXECUTIONS_FINISHED.labels("openai", "SUCCEEDED", "child-test")._value.get()
    series.inc()
    after = metrics.EXECUTIONS_FINISHED.labels("openai", "SUCCEEDED", "child-test")._value.get()
    assert after == before + 1
