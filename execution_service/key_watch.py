"""The subscription to the vault's key changes (WatchApiKeyChanges) that keeps the key cache
honest: each change drops the changed key and is then acknowledged (the vault's SetApiKey and
DeleteApiKey wait for that); while the subscription is down the cache is not trusted; each
new subscription starts from an empty cache."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.keys import KeySource

log = logging.getLogger(__name__)

# Heartbeats missed in a row before the stream is taken for dead (a vault host gone silent).
MISSED_HEARTBEATS = 3


def parse_key_name(name: str) -> tuple[str, str] | None:
    """(workspace, provider) of `workspaces/{workspace}/apiKeys/{provider}`."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "workspaces" and parts[2] == "apiKeys":
        return parts[1], parts[3]
    return None


async def watch_key_changes(
    vault: kv_grpc.KeyVaultServiceStub,
    keys: KeySource,
    *,
    retry_delay: float = 0.25,
    max_retry_delay: float = 1.0,
) -> None:
    """Stay subscribed until cancelled, subscribing again shortly after any loss."""
    delay = retry_delay
    while True:
        # wait_for_ready: a vault that is down is subscribed to as soon as it is back.
        call = vault.WatchApiKeyChanges(wait_for_ready=True)  # type: ignore[call-arg]
        try:
            if await _follow(call, keys):
                delay = retry_delay
        except grpc.aio.AioRpcError as err:
            log.warning("key change subscription failed", extra={"code": err.code().name})
        except TimeoutError:
            log.warning("key change subscription went silent")
        except Exception as exc:  # whatever broke the stream, subscribe again
            log.warning("key change subscription broke", extra={"error": type(exc).__name__})
        finally:
            call.cancel()
            if keys.subscribed:
                log.warning("key change subscription lost; keys are fetched afresh meanwhile")
            keys.subscription_lost()
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_retry_delay)


async def _follow(call: Any, keys: KeySource) -> bool:
    """Apply the stream (a grpc.aio bidirectional call) to the cache, acknowledging each
    change once applied, until it ends. True when it was confirmed live."""
    messages = aiter(call)
    first = await anext(messages, None)  # waits while the vault is unreachable (wait_for_ready)
    if first is None or first.WhichOneof("event") != "started":
        return False
    silence = MISSED_HEARTBEATS * max(first.started.heartbeat_interval_seconds, 1)
    keys.subscription_started()
    log.info("subscribed to key changes")
    while True:
        async with asyncio.timeout(silence):
            message = await anext(messages, None)
        if message is None:
            return True
        if message.WhichOneof("event") == "change":
            slot = parse_key_name(message.change.name)
            if slot is None:  # not a name this service knows: drop everything to be safe
                keys.forget_all()
            else:
                keys.key_changed(*slot)
            applied = kv.WatchApiKeyChangesRequest(acknowledged_sequence=message.change.sequence)
            await call.write(applied)
