"""Resource-name rules both services share."""

from __future__ import annotations

import re

from service_kit.errors import FieldViolation, InvalidArgument

# Workspace ids: 1-63 characters, letters, digits, '-' and '_', starting with a letter or digit.
WORKSPACE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"
_WORKSPACE_NAME = re.compile(rf"^workspaces/({WORKSPACE_PATTERN})$")


def parse_workspace_name(
    parent: str, field: str = "parent", *, allow_all: bool = False
) -> str | None:
    """`workspaces/{workspace}`; with allow_all, `workspaces/-` means every workspace (None)."""
    if allow_all and parent == "workspaces/-":
        return None
    match = _WORKSPACE_NAME.match(parent)
    if not match:
        expected = "workspaces/{workspace}" + (" or workspaces/-" if allow_all else "")
        raise InvalidArgument(
            [
                FieldViolation(
                    field,
                    f"must be {expected}; workspace ids are 1-63 letters, digits, '-' or '_'",
                )
            ]
        )
    return match.group(1)


def workspace_of(parent: str, field: str = "parent") -> str:
    workspace = parse_workspace_name(parent, field)
    assert workspace is not None
    return workspace
