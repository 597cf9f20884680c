"""Page sizes and typed page-token cursors, as pure functions."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from service_kit.errors import InvalidArgument
from service_kit.pagination import (
    BIGINT_ID,
    MAX_PAGE_SIZE,
    Choice,
    Cursor,
    Timestamp,
    Uuid,
    page_request,
    page_size,
    page_token,
)
from tests.page_tokens import forged

CURSOR: Cursor = {
    "p": Choice({"openai", "anthropic"}),
    "id": BIGINT_ID,
    "t": Timestamp(),
    "u": Uuid(),
}
VALUES: dict[str, Any] = {
    "p": "openai",
    "id": 2**63 - 1,
    "t": dt.datetime(2026, 12, 1, 23, 59, 59, 123456, tzinfo=dt.UTC),
    "u": uuid.uuid4(),
}


def test_page_size_defaults_and_is_lowered_to_the_maximum() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE) == page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    assert page_size(2**31 - 1) == MAX_PAGE_SIZE
    assert page_size(0, "batch_size", default=100) == 100
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1, "batch_size")
    assert [v.field for v in caught.value.violations] == ["batch_size"]


def test_a_token_round_trips_its_typed_cursor() -> None:
    token = page_token(VALUES, query="q1", cursor=CURSOR)
    assert page_request(0, token, query="q1", cursor=CURSOR).cursor == VALUES
    # A time written at another offset comes back as the same instant, in UTC.
    shifted = forged(token, t="2026-12-02T13:59:59.123456+14:00")
    assert page_request(0, shifted, query="q1", cursor=CURSOR).cursor == VALUES


@pytest.mark.parametrize(
    "changes",
    [
        {"p": "azure"},
        {"p": 1},
        {"id": 2**63},
        {"id": 0},
        {"id": True},
        {"t": "0001-01-01T00:00:00+14:00"},
        {"t": "9999-12-31T23:59:59-14:00"},
        {"t": "2026-12-01T00:00:00"},
        {"u": 5},
        {"u": "x"},
        {"q": "q2"},
        {"id": ...},
        {"more": 1},
    ],
    ids=repr,
)
def test_a_changed_token_is_refused(changes: dict[str, Any]) -> None:
    token = forged(page_token(VALUES, query="q1", cursor=CURSOR), **changes)
    with pytest.raises(InvalidArgument) as caught:
        page_request(0, token, query="q1", cursor=CURSOR)
    assert [v.field for v in caught.value.violations] == ["page_token"]
