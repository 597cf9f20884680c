"""The Kubernetes manifests (deploy/kubernetes): each overlay renders with `kubectl kustomize`,
every object validates, and the rules a production deployment of the pair must keep hold:
pinned images, probes, a hardened securityContext, resources, replicas, disruption budgets,
network policies, and the names the vault channel and the certificates share.

Needs kubectl (it renders the overlays): skipped without it, except under CI=true."""

from __future__ import annotations

import copy
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.kubernetes.validate import OVERLAYS, Manifest, problems, render

if shutil.which("kubectl") is None:
    if os.environ.get("CI") == "true":
        pytest.fail("kubectl is required under CI=true (it renders deploy/kubernetes)")
    pytest.skip("kubectl not installed: Kubernetes manifests not checked", allow_module_level=True)

NAMESPACES = {"dev": "agents-dev", "production": "agents"}


@pytest.fixture(scope="module", params=[o.name for o in OVERLAYS])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    name = request.param
    return name, render(next(o for o in OVERLAYS if o.name == name))


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def containers(objects: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for deployment in of_kind(objects, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def env_value(container: dict[str, Any], name: str) -> str:
    (value,) = [e["value"] for e in container["env"] if e["name"] == name]
    return value


def test_both_overlays_exist() -> None:
    assert {o.name for o in OVERLAYS} == set(NAMESPACES)


def test_every_object_is_valid(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    assert {d["metadata"]["name"] for d in of_kind(objects, "Deployment")} == {
        "keyvault",
        "execution",
    }
    assert [(o["kind"], o["metadata"]["name"], problems(o)) for o in objects if problems(o)] == []


def test_the_validator_finds_mistakes(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    deployment = copy.deepcopy(named(objects, "Deployment", "keyvault"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["sevice"] = (
        "x"
    )
    assert any("sevice" in p for p in problems(deployment))
    certificate = copy.deepcopy(named(objects, "Certificate", "keyvault"))
    certificate["spec"]["uris"].append("spiffe://agents.internal/admin")
    assert problems(certificate)
    assert problems({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_images_are_pinned(overlay: tuple[str, list[Manifest]]) -> None:
    for _, container in containers(overlay[1]):
        image = container["image"]
        _, _, tag = image.rpartition("/")[2].partition(":")
        assert "@sha256:" in image or (tag and tag != "latest"), image


def test_every_container_has_grpc_probes_on_its_health_port(
    overlay: tuple[str, list[Manifest]],
) -> None:
    for deployment, container in containers(overlay[1]):
        prefix = deployment["metadata"]["name"].upper()
        health_port = int(env_value(container, f"{prefix}_HEALTH_PORT"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, (prefix, probe)
        # Liveness must not follow the database (a restart cannot fix an outage); readiness must.
        assert container["livenessProbe"]["grpc"]["service"] == "liveness"
        assert container["readinessProbe"]["grpc"]["service"].endswith("Service")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == health_port
        assert ports["metrics"] == int(env_value(container, f"{prefix}_METRICS_PORT"))
        assert env_value(container, f"{prefix}_LISTEN_ADDRESS") == f"0.0.0.0:{ports['grpc']}"


def test_pods_are_hardened(overlay: tuple[str, list[Manifest]]) -> None:
    for deployment in of_kind(overlay[1], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context.get("privileged", False) is False
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in writable
            assert not any("subPath" in m for m in container["volumeMounts"])  # no TLS reload


def test_resources_are_set(overlay: tuple[str, list[Manifest]]) -> None:
    for _, container in containers(overlay[1]):
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, container["name"]


def test_at_least_two_replicas_and_a_disruption_budget_each(
    overlay: tuple[str, list[Manifest]],
) -> None:
    objects = overlay[1]
    autoscaled = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
        for h in of_kind(objects, "HorizontalPodAutoscaler")
    }
    assert "execution" in autoscaled
    budgets = [
        p["spec"]["selector"]["matchLabels"] for p in of_kind(objects, "PodDisruptionBudget")
    ]
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        if name in autoscaled:  # a replicas field would reset the autoscaler on every apply
            assert "replicas" not in deployment["spec"]
        assert autoscaled.get(name, deployment["spec"].get("replicas", 1)) >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), name
        keys = {
            c["topologyKey"]
            for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        }
        assert "kubernetes.io/hostname" in keys
        if overlay[0] == "production":
            assert "topology.kubernetes.io/zone" in keys


def test_network_policies_admit_only_the_named_callers(overlay: tuple[str, list[Manifest]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(overlay[1], "NetworkPolicy")}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    def sources(policy: str, port: int) -> list[dict[str, Any]]:
        rules = policies[policy]["ingress"]
        return [
            s for r in rules if {"protocol": "TCP", "port": port} in r["ports"] for s in r["from"]
        ]

    assert sources("keyvault-ingress", 50051) == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "execution"}}},
        {"namespaceSelector": {"matchLabels": {"agents.internal/keyvault-client": "true"}}},
    ]
    assert sources("execution-ingress", 50052) == [
        {"namespaceSelector": {"matchLabels": {"agents.internal/execution-client": "true"}}}
    ]
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert sources("keyvault-ingress", 9451) == [monitoring]
    assert sources("execution-ingress", 9452) == [monitoring]


def test_secrets_come_from_the_cluster_never_from_the_manifests(
    overlay: tuple[str, list[Manifest]],
) -> None:
    objects = overlay[1]
    assert of_kind(objects, "Secret") == []
    for deployment, container in containers(objects):
        by_name = {e["name"]: e for e in container["env"]}
        prefix = deployment["metadata"]["name"].upper()
        assert "secretKeyRef" in by_name[f"{prefix}_DATABASE_URL"]["valueFrom"]
    vault = named(objects, "Deployment", "keyvault")["spec"]["template"]["spec"]["containers"][0]
    keys = {e["name"]: e for e in vault["env"]}["KEYVAULT_MASTER_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"]["name"] == "keyvault-master-keys"


def test_the_vault_is_dialled_by_a_name_its_certificate_carries(
    overlay: tuple[str, list[Manifest]],
) -> None:
    name, objects = overlay
    namespace = NAMESPACES[name]
    host = f"keyvault-headless.{namespace}.svc.cluster.local"
    execution = named(objects, "Deployment", "execution")["spec"]["template"]["spec"]
    assert env_value(execution["containers"][0], "KEYVAULT_ADDRESS") == f"dns:///{host}:50051"
    assert named(objects, "Service", "keyvault-headless")["spec"]["clusterIP"] == "None"
    vault_certificate = named(objects, "Certificate", "keyvault")["spec"]
    assert host in vault_certificate["dnsNames"]
    assert vault_certificate["uris"] == ["spiffe://agents.internal/keyvault"]
    assert named(objects, "Certificate", "execution")["spec"]["uris"] == [
        "spiffe://agents.internal/execution"
    ]
    assert {
        o["metadata"].get("namespace", namespace) for o in objects if o["kind"] != "Namespace"
    } == {namespace}


def test_the_readme_sizing_table_matches_the_production_manifests() -> None:
    production = render(next(o for o in OVERLAYS if o.name == "production"))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\| (CPU|Memory) request / limit \| (.+) \|$", readme, re.M))
    for column, name in enumerate(("keyvault", "execution")):
        resources = named(production, "Deployment", name)["spec"]["template"]["spec"]["containers"][
            0
        ]["resources"]
        for kind, key in (("CPU", "cpu"), ("Memory", "memory")):
            shown = rows[kind].split(" | ")[column]
            wanted = f"{resources['requests'][key]} / {resources['limits'][key]}"
            assert shown == wanted.replace("Mi", " MiB"), (name, kind)
