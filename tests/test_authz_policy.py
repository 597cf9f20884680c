"""Pure tests of the gRFC A43 policy engine (service_kit.authz): no I/O, no gRPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keyvault_service.settings import DEFAULT_POLICY
from service_kit.authz import Decision, Policy, PolicyError

ADMIN = "spiffe://agents.internal/admin"
APP = "spiffe://agents.internal/app"
EXECUTION = "spiffe://agents.internal/execution"
KEYVAULT = "spiffe://agents.internal/keyvault"
SERVICE = "/keyvault.v1.KeyVaultService"
METHODS = (
    "SetApiKey",
    "GetApiKey",
    "ListApiKeys",
    "DeleteApiKey",
    "RevealApiKey",
    "RewrapApiKeys",
    "ListAuditEvents",
    "WatchApiKeyChanges",
)


def policy(**doc: Any) -> Policy:
    return Policy.from_json(json.dumps({"name": "test", **doc}))


def allow(name: str, principals: list[str] | None, paths: list[str] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": name}
    if principals is not None:
        rule["source"] = {"principals": principals}
    if paths is not None:
        rule["request"] = {"paths": paths}
    return rule


def test_deny_rules_win_over_allow_rules() -> None:
    p = policy(
        deny_rules=[allow("no-app-reveal", [APP], [f"{SERVICE}/RevealApiKey"])],
        allow_rules=[allow("everyone-everything", ["*"], None)],
    )
    assert p.evaluate(APP, f"{SERVICE}/RevealApiKey") == Decision(False, "no-app-reveal")
    assert p.evaluate(APP, f"{SERVICE}/GetApiKey") == Decision(True, "everyone-everything")
    assert p.evaluate(ADMIN, f"{SERVICE}/RevealApiKey") == Decision(True, "everyone-everything")


def test_first_matching_allow_rule_decides_and_default_is_deny() -> None:
    p = policy(
        allow_rules=[
            allow("app-get", [APP], [f"{SERVICE}/GetApiKey"]),
            allow("app-any", [APP], [f"{SERVICE}/*"]),
        ]
    )
    assert p.evaluate(APP, f"{SERVICE}/GetApiKey") == Decision(True, "app-get")
    assert p.evaluate(APP, f"{SERVICE}/ListApiKeys") == Decision(True, "app-any")
    # Nothing matches: default deny, with no deciding rule.
    assert p.evaluate(ADMIN, f"{SERVICE}/GetApiKey") == Decision(False, None)
    assert p.evaluate(APP, "/other.v1.Other/GetApiKey") == Decision(False, None)
    assert p.evaluate(None, f"{SERVICE}/GetApiKey") == Decision(False, None)


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("spiffe://agents.internal/app", "spiffe://agents.internal/app", True),
        ("spiffe://agents.internal/app", "spiffe://agents.internal/application", False),
        ("spiffe://agents.internal/app", "spiffe://agents.internal/ap", False),
        ("spiffe://agents.internal/*", "spiffe://agents.internal/anything", True),
        ("spiffe://agents.internal/*", "spiffe://agents.internal.evil/app", False),
        ("spiffe://agents.internal/*", "spiffe://other/agents.internal/app", False),
        ("*/admin", "spiffe://agents.internal/admin", True),
        ("*/admin", "spiffe://agents.internal/admin2", False),
        ("*/admin", "spiffe://agents.internal/notadmin", False),
        ("*", "spiffe://anything/at-all", True),
    ],
)
def test_principal_patterns(pattern: str, value: str, matches: bool) -> None:
    p = policy(allow_rules=[allow("r", [pattern], None)])
    assert p.evaluate(value, "/any.Service/Method").allowed is matches


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        (f"{SERVICE}/GetApiKey", f"{SERVICE}/GetApiKey", True),
        (f"{SERVICE}/GetApiKey", f"{SERVICE}/GetApiKeys", False),
        (f"{SERVICE}/*", f"{SERVICE}/RevealApiKey", True),
        (f"{SERVICE}/*", "/keyvault.v1.KeyVaultServiceX/RevealApiKey", False),
        ("*/RevealApiKey", f"{SERVICE}/RevealApiKey", True),
        ("*/RevealApiKey", f"{SERVICE}/RevealApiKeys", False),
        ("*", "/grpc.health.v1.Health/Check", True),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    p = policy(allow_rules=[allow("r", [APP], [pattern])])
    assert p.evaluate(APP, path).allowed is matches


def test_star_principal_means_authenticated_but_missing_source_means_anyone() -> None:
    star = policy(allow_rules=[allow("any-identity", ["*"], ["/grpc.health.v1.Health/*"])])
    assert star.evaluate(APP, "/grpc.health.v1.Health/Check").allowed
    assert not star.evaluate(None, "/grpc.health.v1.Health/Check").allowed

    no_source = policy(allow_rules=[allow("anyone", None, ["/grpc.health.v1.Health/*"])])
    assert no_source.evaluate(None, "/grpc.health.v1.Health/Check") == Decision(True, "anyone")
    assert not no_source.evaluate(APP, f"{SERVICE}/GetApiKey").allowed

    # An empty `source` object (no principals) also matches every caller.
    empty_source = policy(allow_rules=[{"name": "e", "source": {}, "request": {"paths": ["*"]}}])
    assert empty_source.evaluate(None, "/x.Y/Z").allowed


def test_missing_request_matches_every_method() -> None:
    p = policy(
        deny_rules=[allow("ban-keyvault", [KEYVAULT], None)],
        allow_rules=[allow("admin-everything", [ADMIN, KEYVAULT], None)],
    )
    assert p.evaluate(ADMIN, f"{SERVICE}/RevealApiKey").allowed
    assert p.evaluate(ADMIN, "/grpc.health.v1.Health/Check").allowed
    assert p.evaluate(KEYVAULT, "/grpc.health.v1.Health/Check") == Decision(False, "ban-keyvault")


def test_a_principal_list_matches_any_of_its_entries() -> None:
    p = policy(allow_rules=[allow("two", [APP, ADMIN], [f"{SERVICE}/GetApiKey"])])
    assert p.evaluate(APP, f"{SERVICE}/GetApiKey").allowed
    assert p.evaluate(ADMIN, f"{SERVICE}/GetApiKey").allowed
    assert not p.evaluate(EXECUTION, f"{SERVICE}/GetApiKey").allowed


@pytest.mark.parametrize(
    ("doc", "message_part"),
    [
        (
            {
                "allow_rules": [
                    {
                        "name": "h",
                        "request": {"paths": ["*"], "headers": [{"key": "x", "values": ["y"]}]},
                    }
                ]
            },
            "headers unsupported",
        ),
        (
            {"allow_rules": [{"name": "s", "source": {"principals": ["*"], "namespaces": []}}]},
            "source supports only 'principals'",
        ),
        ({"allow_rules": [{"name": "x", "conditions": {}}]}, "unsupported fields"),
        ({"allow_rules": [allow("r", ["*"], None)], "extra": 1}, "unsupported policy fields"),
        ({"allow_rules": []}, "at least one allow rule"),
        ({}, "at least one allow rule"),
        ({"allow_rules": [{"source": {"principals": ["*"]}}]}, "string 'name'"),
        ({"allow_rules": ["not-a-rule"]}, "string 'name'"),
        ({"allow_rules": [allow("r", [], None)]}, "source.principals"),
        ({"allow_rules": [allow("r", [""], None)]}, "source.principals"),
        ({"allow_rules": [{"name": "r", "source": {"principals": "*"}}]}, "source.principals"),
        ({"allow_rules": [{"name": "r", "request": {"paths": [1]}}]}, "request.paths"),
        ({"allow_rules": [{"name": "r", "request": {"paths": []}}]}, "request.paths"),
        # An empty list means "any" in A43; here it would silently deny nobody: rejected.
        (
            {
                "deny_rules": [{"name": "d", "source": {"principals": []}}],
                "allow_rules": [allow("r", ["*"], None)],
            },
            "source.principals",
        ),
        ({"allow_rules": [{"name": "r", "request": "all"}]}, "request supports only"),
    ],
)
def test_unsupported_or_malformed_rules_are_rejected(
    doc: dict[str, Any], message_part: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_json(json.dumps({"name": "p", **doc}))
    assert message_part in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["", "{", "{'name': 'single quotes'}", "[]", '"a string"', '{"name": 1, "allow_rules": []}'],
)
def test_malformed_documents_are_rejected(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.from_json(text)


def test_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"name": "p", "allow_rules": [ }')
    with pytest.raises(PolicyError, match=r"policy\.json: policy is not valid JSON"):
        Policy.from_file(path)


# The shipped key vault policy, evaluated without a server (the gRPC-level matrix is in
# tests/keyvault/test_authorization.py).
EXPECTED_ALLOWED = {
    "keyvault": set(),
    "execution": {"RevealApiKey", "WatchApiKeyChanges"},
    "app": {"SetApiKey", "GetApiKey", "ListApiKeys", "DeleteApiKey"},
    "admin": {"RewrapApiKeys", "ListAuditEvents", "GetApiKey", "ListApiKeys"},
}


@pytest.mark.parametrize("workload", sorted(EXPECTED_ALLOWED))
def test_shipped_keyvault_policy_matrix(workload: str) -> None:
    p = Policy.from_file(DEFAULT_POLICY)
    principal = f"spiffe://agents.internal/{workload}"
    allowed = {m for m in METHODS if p.evaluate(principal, f"{SERVICE}/{m}").allowed}
    assert allowed == EXPECTED_ALLOWED[workload]
    assert p.evaluate(principal, "/grpc.health.v1.Health/Check").allowed
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert p.evaluate(principal, reflection).allowed
    # Another trust domain with the same workload name gets nothing but a default deny.
    foreign = f"spiffe://evil.example/{workload}"
    assert not any(p.evaluate(foreign, f"{SERVICE}/{m}").allowed for m in METHODS)
    assert not p.evaluate(None, "/grpc.health.v1.Health/Check").allowed


# The shipped execution policy, evaluated without a server (the gRPC-level matrices are in
# tests/execution/test_api_errors.py and tests/execution/test_agents.py).
EXECUTION_SERVICE = "/execution.v1.ExecutionService"
EXECUTION_METHODS = (
    "Execute",
    "GetExecution",
    "CancelExecution",
    "ListExecutions",
    "GetAgentStats",
    "TestApiKey",
    "CreateAgent",
    "GetAgent",
    "ListAgents",
    "UpdateAgent",
    "DeleteAgent",
)
EXPECTED_EXECUTION_ALLOWED = {
    "keyvault": set(),
    "execution": set(),
    "app": set(EXECUTION_METHODS),
    "admin": {
        "GetExecution",
        "CancelExecution",
        "ListExecutions",
        "GetAgentStats",
        "GetAgent",
        "ListAgents",
    },
}


@pytest.mark.parametrize("workload", sorted(EXPECTED_EXECUTION_ALLOWED))
def test_shipped_execution_policy_matrix(workload: str) -> None:
    from execution_service.settings import DEFAULT_POLICY as EXECUTION_POLICY

    p = Policy.from_file(EXECUTION_POLICY)
    principal = f"spiffe://agents.internal/{workload}"
    allowed = {
        m for m in EXECUTION_METHODS if p.evaluate(principal, f"{EXECUTION_SERVICE}/{m}").allowed
    }
    assert allowed == EXPECTED_EXECUTION_ALLOWED[workload]
