"""Authorization policies in the gRPC authorization policy JSON format (gRFC A43).

Evaluation: deny rules first, then allow rules, otherwise deny. A rule matches when its
`source.principals` match the caller and its `request.paths` match the method; an absent
`source` or `request` matches everything. Patterns are exact, `prefix*`, `*suffix` or `*`
(which, for principals, means any authenticated caller). Fields we do not implement
(`request.headers`) are rejected at load time rather than silently ignored: fail closed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PolicyError(ValueError):
    """The policy file is malformed or uses a feature this engine does not implement."""


def _matches(pattern: str, value: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return pattern == value


@dataclass(frozen=True)
class Rule:
    name: str
    principals: tuple[str, ...] | None  # None: any caller, authenticated or not
    paths: tuple[str, ...] | None  # None: any method

    def matches(self, principal: str | None, path: str) -> bool:
        if self.principals is not None and (
            principal is None or not any(_matches(p, principal) for p in self.principals)
        ):
            return False
        return self.paths is None or any(_matches(p, path) for p in self.paths)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str | None  # name of the deciding rule; None for the default deny


@dataclass(frozen=True)
class Policy:
    name: str
    deny_rules: tuple[Rule, ...]
    allow_rules: tuple[Rule, ...]

    def evaluate(self, principal: str | None, path: str) -> Decision:
        for rule in self.deny_rules:
            if rule.matches(principal, path):
                return Decision(False, rule.name)
        for rule in self.allow_rules:
            if rule.matches(principal, path):
                return Decision(True, rule.name)
        return Decision(False, None)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"policy is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise PolicyError("policy must be an object with a string 'name'")
        unknown = set(doc) - {"name", "deny_rules", "allow_rules", "audit_logging_options"}
        if unknown:
            raise PolicyError(f"unsupported policy fields: {sorted(unknown)}")
        if not doc.get("allow_rules"):
            raise PolicyError("policy needs at least one allow rule")
        return cls(
            name=doc["name"],
            deny_rules=tuple(_rule(r) for r in doc.get("deny_rules", [])),
            allow_rules=tuple(_rule(r) for r in doc["allow_rules"]),
        )

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        try:
            return cls.from_json(path.read_text())
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from exc


def _strings(value: Any, where: str) -> tuple[str, ...]:
    # An empty list means "any" in gRFC A43 but would match nothing here: in a deny rule that
    # silently denies nobody. Reject it; omit the field to match everything.
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where} must be a non-empty list of non-empty strings")
    return tuple(value)


def _rule(raw: Any) -> Rule:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise PolicyError("every rule must be an object with a string 'name'")
    name = raw["name"]
    unknown = set(raw) - {"name", "source", "request"}
    if unknown:
        raise PolicyError(f"rule {name!r}: unsupported fields {sorted(unknown)}")
    principals = paths = None
    if "source" in raw:
        source = raw["source"]
        if not isinstance(source, dict) or set(source) - {"principals"}:
            raise PolicyError(f"rule {name!r}: source supports only 'principals'")
        if "principals" in source:
            principals = _strings(source["principals"], f"rule {name!r} source.principals")
    if "request" in raw:
        request = raw["request"]
        if not isinstance(request, dict) or set(request) - {"paths"}:
            raise PolicyError(f"rule {name!r}: request supports only 'paths' (headers unsupported)")
        if "paths" in request:
            paths = _strings(request["paths"], f"rule {name!r} request.paths")
    return Rule(name=name, principals=principals, paths=paths)
