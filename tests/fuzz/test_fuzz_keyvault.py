"""Every RPC of keyvault.v1.KeyVaultService, fuzzed (the properties: properties.py).

The @example rows pin the shapes of known bugs, so that every run tries them whatever the
seed: trailing newlines in names, control characters and forbidden hosts in base URLs,
forged page tokens, a page size over the maximum, denials that must be audited.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.properties import KV, callers, check_call
from tests.fuzz.stack import ANONYMOUS, FuzzStack
from tests.fuzz.strategies import (
    API_KEYS,
    AUDIT_TOKENS,
    EMULATOR,
    KEY_TOKENS,
    POOL_WORKSPACES,
    SEED,
    VALID,
    WORKSPACES,
    Drawn,
    TokenRecipe,
    bad,
    base_urls,
    batch_sizes,
    checked,
    combine,
    key_names,
    ok,
    page_sizes,
    parents,
)

SEED_PARENT = f"workspaces/{SEED}"
SEED_KEY = f"{SEED_PARENT}/apiKeys/openai"


# --- SetApiKey -----------------------------------------------------------------------------

SET = dict(
    name=ok("workspaces/fuzz-a/apiKeys/openai"),
    api_key=ok("sk-fuzz-0123456789"),
    base_url=ok(""),
    who="app",
)


@fuzz_settings
@given(
    name=key_names(),
    api_key=checked("api_key", API_KEYS),
    base_url=base_urls(),
    who=callers("app"),
)
@example(**{**SET, "name": bad("workspaces/fuzz-a/apiKeys/openai\n")})
@example(**{**SET, "name": bad("workspaces/fuzz-a\n/apiKeys/openai")})
@example(**{**SET, "api_key": bad("sk-fuzz-0123456789\n")})
@example(**{**SET, "base_url": bad("https://api.openai.com/v1\n")})
@example(**{**SET, "base_url": bad("https://api.openai.com/\tv1")})
@example(**{**SET, "base_url": bad("https://api.openai.com/v1\x00")})
@example(**{**SET, "base_url": bad("https://169.254.169.254")})
@example(**{**SET, "base_url": bad("https://metadata.google.internal")})
@example(**{**SET, "base_url": bad("https://10.0.0.1")})
@example(**{**SET, "base_url": bad("https://192.168.1.1")})
@example(**{**SET, "base_url": bad("https://[fd00::1]")})
@example(**{**SET, "base_url": bad("https://api.openai.com:0")})
@example(**{**SET, "base_url": bad("http://api.openai.com")})
@example(**{**SET, "base_url": ok(EMULATOR)})
@example(**{**SET, "who": "admin"})
@example(**{**SET, "who": ANONYMOUS})
def test_set_api_key(
    fuzz_stack: FuzzStack, name: Drawn, api_key: Drawn, base_url: Drawn, who: str
) -> None:
    request = kv.SetApiKeyRequest(
        name=name.value, api_key=api_key.value, base_url=fuzz_stack.with_emulator(base_url.value)
    )
    verdict = combine(name.verdict, api_key.verdict, base_url.verdict)
    check_call(fuzz_stack, KV + "SetApiKey", request, verdict, who, secret=api_key.value)


# --- GetApiKey, DeleteApiKey, RevealApiKey: a key name ---------------------------------------

SEED_OR_POOL = st.one_of(st.just(SEED), POOL_WORKSPACES)


@fuzz_settings
@given(name=key_names(SEED_OR_POOL), who=callers("app"))
@example(name=bad(SEED_KEY + "\n"), who="app")
@example(name=bad(SEED_KEY + "\x00"), who="admin")
@example(name=ok(SEED_KEY), who="execution")
def test_get_api_key(fuzz_stack: FuzzStack, name: Drawn, who: str) -> None:
    request = kv.GetApiKeyRequest(name=name.value)
    check_call(fuzz_stack, KV + "GetApiKey", request, name.verdict, who)


@fuzz_settings
@given(name=key_names(), who=callers("app"))
@example(name=bad("workspaces/fuzz-a/apiKeys/openai\n"), who="app")
@example(name=bad("workspaces/fuzz-a/apiKeys/anthropic\r\n"), who="app")
@example(name=ok("workspaces/fuzz-a/apiKeys/openai"), who="execution")
@example(name=ok("workspaces/fuzz-a/apiKeys/openai"), who=ANONYMOUS)
def test_delete_api_key(fuzz_stack: FuzzStack, name: Drawn, who: str) -> None:
    # Something to delete: the pool workspaces hold keys most of the time.
    if name.verdict == VALID or name.value.startswith("workspaces/fuzz-a/"):
        fuzz_stack.set_key("workspaces/fuzz-a/apiKeys/openai")
    request = kv.DeleteApiKeyRequest(name=name.value)
    check_call(fuzz_stack, KV + "DeleteApiKey", request, name.verdict, who)


@fuzz_settings
@given(name=key_names(SEED_OR_POOL), who=callers("execution"))
@example(name=bad(SEED_KEY + "\n"), who="execution")
@example(name=ok(SEED_KEY), who="app")
@example(name=ok(SEED_KEY), who=ANONYMOUS)
def test_reveal_api_key(fuzz_stack: FuzzStack, name: Drawn, who: str) -> None:
    request = kv.RevealApiKeyRequest(name=name.value)
    check_call(fuzz_stack, KV + "RevealApiKey", request, name.verdict, who)


# --- the listings ----------------------------------------------------------------------------

SEED_OR_ANY = st.one_of(st.just(SEED), WORKSPACES)


@fuzz_settings
@given(parent=parents(SEED_OR_ANY), size=page_sizes(), token=KEY_TOKENS, who=callers("app"))
@example(
    parent=ok(SEED_PARENT), size=ok(1001), token=TokenRecipe("empty", verdict=VALID), who="app"
)
@example(parent=ok(SEED_PARENT), size=ok(1), token=TokenRecipe("genuine", verdict=VALID), who="app")
@example(parent=bad(SEED_PARENT + "\n"), size=ok(0), token=TokenRecipe("empty"), who="app")
@example(
    parent=ok("workspaces/other"),
    size=ok(1),
    token=TokenRecipe("genuine", verdict=VALID),
    who="app",
)
@example(parent=ok(SEED_PARENT), size=bad(-1), token=TokenRecipe("empty"), who="admin")
@example(parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "provider", 7), who="app")
@example(
    parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "provider", ["x"]), who="app"
)
@example(
    parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "provider", {"a": 1}), who="app"
)
@example(
    parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "provider", "a\x00"), who="app"
)
def test_list_api_keys(
    fuzz_stack: FuzzStack, parent: Drawn, size: Drawn, token: TokenRecipe, who: str
) -> None:
    request = kv.ListApiKeysRequest(
        parent=parent.value,
        page_size=size.value,
        page_token=token.make(fuzz_stack.tokens["ListApiKeys"]),
    )
    verdict = combine(parent.verdict, size.verdict, token.verdict_for(parent.value == SEED_PARENT))
    check_call(fuzz_stack, KV + "ListApiKeys", request, verdict, who)


AUDIT_PARENTS = parents(st.one_of(SEED_OR_ANY, st.just("-")), rule="audit_parent")


@fuzz_settings
@given(parent=AUDIT_PARENTS, size=page_sizes(), token=AUDIT_TOKENS, who=callers("admin"))
@example(
    parent=ok(SEED_PARENT), size=ok(1001), token=TokenRecipe("empty", verdict=VALID), who="admin"
)
@example(
    parent=ok("workspaces/-"), size=ok(0), token=TokenRecipe("empty", verdict=VALID), who="app"
)
@example(parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "id", 10**30), who="admin")
@example(parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "id", 2**63), who="admin")
@example(parent=ok(SEED_PARENT), size=ok(0), token=TokenRecipe("field", "id", "5"), who="admin")
def test_list_audit_events(
    fuzz_stack: FuzzStack, parent: Drawn, size: Drawn, token: TokenRecipe, who: str
) -> None:
    request = kv.ListAuditEventsRequest(
        parent=parent.value,
        page_size=size.value,
        page_token=token.make(fuzz_stack.tokens["ListAuditEvents"]),
    )
    verdict = combine(parent.verdict, size.verdict, token.verdict_for(parent.value == SEED_PARENT))
    check_call(fuzz_stack, KV + "ListAuditEvents", request, verdict, who)


# --- RewrapApiKeys ---------------------------------------------------------------------------


@fuzz_settings
@given(size=batch_sizes(), who=callers("admin"))
@example(size=bad(-1), who="admin")
@example(size=ok(0), who="app")
@example(size=ok(0), who=ANONYMOUS)
def test_rewrap_api_keys(fuzz_stack: FuzzStack, size: Drawn, who: str) -> None:
    request = kv.RewrapApiKeysRequest(batch_size=size.value)
    check_call(fuzz_stack, KV + "RewrapApiKeys", request, size.verdict, who)
