"""Render each Kustomize overlay and validate every object, offline (no cluster needed).

`python -m deploy.kubernetes.validate` renders `overlays/*` with `kubectl kustomize` and
checks each object against the Kubernetes OpenAPI schemas (the `kubernetes-validate`
package, strict: an unknown field is an error) of the oldest and the newest Kubernetes
version the manifests target. The schemas do not cover custom resources (cert-manager's
Certificate and Issuer, the Prometheus Operator's PodMonitor): those get the small
structural checks below, and any other custom kind is an error, so nothing goes unchecked.
Exit status 1 when anything is invalid, with one line per problem.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
OVERLAYS = sorted(p for p in (HERE / "overlays").iterdir() if p.is_dir())
# The manifests need Kubernetes 1.27 or later (native gRPC probes, matchLabelKeys in topology
# spread constraints); validate against an older release and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
SPIFFE_PREFIX = "spiffe://agents.internal/"

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """kubectl is missing, or Kustomize refused the overlay (its message is included)."""


def render(overlay: Path) -> list[Manifest]:
    """The objects `kubectl kustomize overlay` produces."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is not installed (it renders Kustomize overlays)")
    done = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {overlay} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def describe(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- custom resources: the fields these manifests use, checked by hand ----------------------

CERTIFICATE_FIELDS = {
    "secretName", "issuerRef", "duration", "renewBefore", "privateKey", "usages", "uris",
    "dnsNames", "commonName", "isCA", "ipAddresses", "subject", "secretTemplate",
}  # fmt: skip
CERTIFICATE_USAGES = {
    "digital signature", "key encipherment", "server auth", "client auth", "cert sign",
    "crl sign",
}  # fmt: skip
ISSUER_KINDS = {"selfSigned", "ca", "vault", "acme", "venafi"}


def _certificate(spec: Manifest) -> Iterator[str]:
    yield from (f"unknown field spec.{f}" for f in sorted(set(spec) - CERTIFICATE_FIELDS))
    if not isinstance(spec.get("secretName"), str):
        yield "spec.secretName is required"
    ref = spec.get("issuerRef") or {}
    if not ref.get("name") or ref.get("kind") not in ("Issuer", "ClusterIssuer"):
        yield "spec.issuerRef needs a name and kind Issuer or ClusterIssuer"
    usages = spec.get("usages", [])
    yield from (f"unknown usage {u!r}" for u in usages if u not in CERTIFICATE_USAGES)
    if not spec.get("isCA"):
        uris = spec.get("uris", [])
        if len(uris) != 1 or not str(uris[0]).startswith(SPIFFE_PREFIX):
            yield f"a workload certificate has exactly one URI SAN, {SPIFFE_PREFIX}<workload>"
    for name in spec.get("dnsNames", []):
        if not isinstance(name, str) or name != name.lower() or "NAMESPACE" in name:
            yield f"dnsNames entry {name!r} is not a lower-case host name with its namespace"


def _issuer(spec: Manifest) -> Iterator[str]:
    kinds = set(spec) & ISSUER_KINDS
    if len(kinds) != 1 or set(spec) - ISSUER_KINDS:
        yield f"spec must hold exactly one of {sorted(ISSUER_KINDS)}"
    elif "ca" in kinds and not (spec["ca"] or {}).get("secretName"):
        yield "spec.ca.secretName is required"


def _pod_monitor(spec: Manifest) -> Iterator[str]:
    if not (spec.get("selector") or {}).get("matchLabels"):
        yield "spec.selector.matchLabels is required"
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints or not all(isinstance(e, dict) and e.get("port") for e in endpoints):
        yield "spec.podMetricsEndpoints needs at least one entry, each with a named port"


CUSTOM_RESOURCES: dict[tuple[str, str], Callable[[Manifest], Iterator[str]]] = {
    ("cert-manager.io/v1", "Certificate"): _certificate,
    ("cert-manager.io/v1", "Issuer"): _issuer,
    ("cert-manager.io/v1", "ClusterIssuer"): _issuer,
    ("monitoring.coreos.com/v1", "PodMonitor"): _pod_monitor,
}


def problems(obj: Manifest, versions: tuple[str, ...] = KUBERNETES_VERSIONS) -> list[str]:
    """What is wrong with one rendered object (empty: valid)."""
    custom = CUSTOM_RESOURCES.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if custom is not None:
        if not obj.get("metadata", {}).get("name"):
            return ["metadata.name is required"]
        return list(custom(obj.get("spec") or {}))
    found = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path) or "(top level)"
            found.append(f"Kubernetes {version}: {where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"no schema for {obj.get('apiVersion')} {obj.get('kind')}")
            break
    return found


def main() -> int:
    failed = False
    for overlay in OVERLAYS:
        try:
            objects = render(overlay)
        except RenderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        bad = [(describe(o), p) for o in objects for p in problems(o)]
        for name, problem in bad:
            print(f"{overlay.name}: {name}: {problem}", file=sys.stderr)
        failed |= bool(bad)
        custom = sum((o["apiVersion"], o["kind"]) in CUSTOM_RESOURCES for o in objects)
        print(
            f"overlays/{overlay.name}: {len(objects)} objects, "
            f"{'INVALID' if bad else 'valid'} (Kubernetes {' and '.join(KUBERNETES_VERSIONS)} "
            f"schemas; {custom} cert-manager/Prometheus Operator objects by structural checks)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
