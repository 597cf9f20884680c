"""A wrapper that keeps plaintext secrets out of logs, reprs and tracebacks."""

from __future__ import annotations

import hmac
from typing import Final

_REDACTED: Final = "Secret('**********')"


class Secret:
    """Holds a plaintext secret; `repr`, `str` and `format` never show it.

    Call `reveal()` at the one place that must send the secret (an HTTP header, a
    protobuf field the contract allows). Equality compares in constant time.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return _REDACTED

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _REDACTED

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:
        raise TypeError("Secret values cannot be pickled")
