"""Resource-name rules both services share.

Every identifier is checked with a full match against an explicit character class, never
`^...$` with `re.match` (where `$` also matches before a trailing newline), so no control
character, newline included, gets into a name, a row or a log line.
"""

from __future__ import annotations

import re
import unicodedata

from service_kit.errors import FieldViolation, InvalidArgument

# Workspace ids: 1-63 characters, letters, digits, '-' and '_', starting with a letter or digit.
WORKSPACE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"
_WORKSPACE_NAME = re.compile(rf"workspaces/({WORKSPACE_PATTERN})")


def has_control_characters(text: str) -> bool:
    """For free text kept beside identifiers (label values): C0, DEL and C1 controls, NUL
    among them, which PostgreSQL text and jsonb refuse and which can forge log lines."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def parse_workspace_name(
    parent: str, field: str = "parent", *, allow_all: bool = False
) -> str | None:
    """`workspaces/{workspace}`; with allow_all, `workspaces/-` means every workspace (None)."""
    if allow_all and parent == "workspaces/-":
        return None
    match = _WORKSPACE_NAME.fullmatch(parent)
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
