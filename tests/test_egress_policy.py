"""The egress policy and base URL rules, pure: no DNS, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_kit import devstack
from service_kit.egress import EgressPolicy, is_public_address, parse_ip
from service_kit.settings import Env, SettingsError
from service_kit.urls import base_url_violations

STRICT = EgressPolicy()
DEV = EgressPolicy.parse("127.0.0.1, localhost,10.1.0.0/16,VLLM.internal.")

NON_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "198.18.0.1",  # benchmarking
    "::1",
    "::",
    "fd00::1",  # unique local
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:a00:1::",  # 6to4 of 10.0.0.1
]
PUBLIC = ["8.8.8.8", "104.18.6.192", "2606:4700::6812:6c0", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = parse_ip(address)
    assert ip is not None
    assert not is_public_address(ip)
    assert not STRICT.address_allowed("provider.example.com", address)
    assert STRICT.host_refusal(address) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    ip = parse_ip(address)
    assert ip is not None and is_public_address(ip)
    assert STRICT.address_allowed("provider.example.com", address)
    assert STRICT.host_refusal(address) is None


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST.", "api.localhost", "metadata.google.internal", "metadata.goog"],
)
def test_names_of_this_machine_and_metadata_services_are_refused(host: str) -> None:
    assert STRICT.host_refusal(host) is not None


def test_other_names_pass_by_name_and_are_judged_by_their_addresses() -> None:
    assert STRICT.host_refusal("api.openai.com") is None
    assert STRICT.host_refusal("vm") is None  # where it points is known only at connect time
    assert not STRICT.address_allowed("vm", "127.0.0.1")


def test_http_only_to_allowlisted_hosts() -> None:
    assert STRICT.host_refusal("api.example.com", scheme="http") is not None
    assert DEV.host_refusal("127.0.0.1", scheme="http") is None
    assert DEV.host_refusal("localhost", scheme="http") is None
    assert DEV.host_refusal("10.1.2.3", scheme="http") is None  # inside 10.1.0.0/16
    assert DEV.host_refusal("10.2.0.1", scheme="http") is not None
    assert DEV.host_refusal("vllm.internal", scheme="http") is None


def test_allowlist_entries() -> None:
    assert DEV.hosts == frozenset({"localhost", "vllm.internal"})
    assert DEV.is_allowlisted("10.1.255.255")
    assert DEV.is_allowlisted("::ffff:127.0.0.1")  # the same address, written as IPv6
    assert not DEV.is_allowlisted("127.0.0.2")
    # An allowlisted name may resolve anywhere; an allowlisted address admits itself only.
    assert DEV.address_allowed("vllm.internal", "10.9.9.9")
    assert DEV.address_allowed("rebind.example.com", "127.0.0.1")
    assert not DEV.address_allowed("rebind.example.com", "127.0.0.2")
    assert not DEV.address_allowed("rebind.example.com", "fe80::1%eth0")


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "exa mple.com", "bad/host", "a..b"])
def test_a_malformed_allowlist_is_a_settings_error_naming_the_variable(entry: str) -> None:
    with pytest.raises(SettingsError, match="PROVIDER_ALLOWED_HOSTS"):
        Env({"PROVIDER_ALLOWED_HOSTS": f"localhost,{entry}"}).egress_policy()


def test_with_hosts_adds_names_and_addresses() -> None:
    policy = STRICT.with_hosts("api.openai.com", "127.0.0.1")
    assert policy.is_allowlisted("API.OpenAI.com")
    assert policy.is_allowlisted("127.0.0.1")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v\n1",
        "https://api.example.com/v1\n",
        "https://api.exa\tmple.com/v1",
        "https://api.example.com/v1\x00",
        "https://api.example.com/ v1",
        "https://api.example.com:0/v1",
        "https://169.254.169.254/latest",
        "https://metadata.google.internal/v1",
        "https://10.0.0.1/v1",
        "https://192.168.1.1/v1",
        "https://[fd00::1]/v1",
        "https://[::ffff:127.0.0.1]/v1",
        "https://localhost/v1",
        "http://api.example.com/v1",
        "https://127.1/v1",
        "https://2130706433/v1",
        "https://0x7f.0.0.1/v1",
        "https://127.000.000.001/v1",
    ],
)
def test_base_url_refusals(url: str) -> None:
    violations = base_url_violations(url, STRICT)
    assert [v.field for v in violations] == ["base_url"]
    assert "\n" not in violations[0].description


def test_base_url_allowed_forms() -> None:
    assert base_url_violations("", STRICT) == []
    assert base_url_violations("https://api.example.com:8443/v1", STRICT) == []
    assert base_url_violations("http://127.0.0.1:8089", DEV) == []
    assert base_url_violations("https://10.1.0.7/v1", DEV) == []


async def test_make_run_allowlists_loopback_unless_the_operator_chose(tmp_path: Path) -> None:
    base = {
        "CERTS_DIR": str(tmp_path),
        "KEYVAULT_MASTER_KEYS": "1:" + "ab" * 32,
        "KEYVAULT_DATABASE_URL": "postgresql://unused/keyvault",
        "EXECUTION_DATABASE_URL": "postgresql://unused/execution",
    }
    env = dict(base)
    await devstack.prepare_environment(env)
    policy = Env(env).egress_policy()
    assert policy.is_allowlisted("127.0.0.1") and policy.is_allowlisted("localhost")

    chosen = dict(base, PROVIDER_ALLOWED_HOSTS="vllm.internal")
    await devstack.prepare_environment(chosen)
    assert chosen["PROVIDER_ALLOWED_HOSTS"] == "vllm.internal"
