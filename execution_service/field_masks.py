"""Resource names, update masks and field decoding shared by the standard methods of agents
and budgets."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from execution_service.agents import refused
from execution_service.validation import agent_id_violations
from service_kit.errors import FieldViolation
from service_kit.names import WORKSPACE_PATTERN


class ResourceName:
    """`workspaces/{workspace}/{collection}/{id}`, the id following the agent-id rule."""

    def __init__(self, collection: str, singular: str) -> None:
        self._pattern = re.compile(rf"workspaces/({WORKSPACE_PATTERN})/{collection}/([^/]*)")
        self._shape = f"workspaces/{{workspace}}/{collection}/{{{singular}}}"

    def violations(self, name: str, field: str) -> tuple[str, str, list[FieldViolation]]:
        """(workspace, id, what is wrong with `name` at `field`)."""
        match = self._pattern.fullmatch(name)
        if not match:
            return "", "", [FieldViolation(field, f"must be {self._shape}")]
        return match.group(1), match.group(2), agent_id_violations(match.group(2), field)

    def parse(self, name: str, field: str = "name") -> tuple[str, str]:
        """(workspace, id); INVALID_ARGUMENT when `name` is not one."""
        workspace, resource_id, violations = self.violations(name, field)
        if violations:
            raise refused(violations)
        return workspace, resource_id


Decoder = Callable[[], tuple[Any, list[FieldViolation]]]


def mask_fields(
    paths: Sequence[str], updatable: Sequence[str], field_: str = "update_mask"
) -> frozenset[str]:
    """The fields an update mask names: empty or `*` means every updatable field; anything
    else must be an updatable field's name."""
    if not paths or list(paths) == ["*"]:
        return frozenset(updatable)
    violations = [
        FieldViolation(
            f"{field_}.paths[{i}]",
            "* must be the only path"
            if path == "*"
            else f"{path!r} is not an updatable field (one of {', '.join(updatable)}, or *)",
        )
        for i, path in enumerate(paths)
        if path not in updatable
    ]
    if violations:
        raise refused(violations)
    return frozenset(paths)


def decode_fields(
    decoders: Mapping[str, Decoder], fields: Collection[str], updatable: Sequence[str]
) -> tuple[dict[str, Any], list[FieldViolation]]:
    """The named fields, each checked by its decoder (only those: an update ignores the rest
    of the message, as its mask says), and every violation found."""
    values, violations = {}, []
    for name in updatable:
        if name in fields:
            values[name], found = decoders[name]()
            violations += found
    return values, violations
