"""Every RPC of keyvault.v1.KeyVaultService, fuzzed (properties: properties.py)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from tests.fuzz.properties import KV, check_call
from tests.fuzz.stack import IDENTITIES, FuzzStack
from tests.fuzz.strategies import INVALID, Drawn, key_names


def callers(right: str) -> st.SearchStrategy[str]:
    """Mostly the identity the policy admits, sometimes any other."""
    return st.sampled_from([right] * len(IDENTITIES) + list(IDENTITIES))


@given(name=key_names(), who=callers("app"))
@example(name=Drawn("workspaces/fuzz-a/apiKeys/openai\n", INVALID), who="app")
def test_get_api_key(fuzz_stack: FuzzStack, name: Drawn, who: str) -> None:
    check_call(fuzz_stack, KV + "GetApiKey", kv.GetApiKeyRequest(name=name.value), name.verdict, who)
