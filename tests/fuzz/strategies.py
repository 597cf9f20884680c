"""Hostile inputs, each drawn with what the API contract says of it.

Every strategy here yields `Drawn(value, verdict)`: VALID (the server must not answer
INVALID_ARGUMENT), INVALID (it must answer INVALID_ARGUMENT) or EITHER (the contract does not
decide; only the general properties apply). The verdicts come from the documented rules,
written out again here with full matches, independently of the services' validators.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import event
from hypothesis import strategies as st

VALID, EITHER, INVALID = "valid", "either", "invalid"


def combine(*verdicts: str) -> str:
    """A request is invalid when one field is, valid when every field is."""
    if INVALID in verdicts:
        return INVALID
    return EITHER if EITHER in verdicts else VALID


@dataclass(frozen=True)
class Drawn:
    value: Any
    verdict: str


def ok(value: Any) -> Drawn:
    return Drawn(value, VALID)


def bad(value: Any) -> Drawn:
    return Drawn(value, INVALID)


# --- the documented rules, as full matches -------------------------------------------------

WORKSPACE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"
PROVIDERS = ("openai", "anthropic")
RULES = {
    "workspace": re.compile(WORKSPACE),
    "parent": re.compile(rf"workspaces/{WORKSPACE}"),
    "audit_parent": re.compile(rf"workspaces/({WORKSPACE}|-)"),  # "-": every workspace
    "key_name": re.compile(rf"workspaces/{WORKSPACE}/apiKeys/(openai|anthropic)"),
    "execution_name": re.compile(
        rf"workspaces/{WORKSPACE}/executions/"
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    ),
    "agent_id": re.compile(r"[A-Za-z0-9._-]{1,128}"),
    "model": re.compile(r"[A-Za-z0-9._:/@-]{1,256}"),
    "request_id": re.compile(r"[A-Za-z0-9._:-]{1,128}"),
    "label_key": re.compile(r"[a-z][a-z0-9_-]{0,62}"),
    "api_key": re.compile(r"[\x21-\x7e]{1,4096}"),
}


def verdict_of(rule: str, value: str) -> str:
    return VALID if RULES[rule].fullmatch(value) else INVALID


def shape_of(text: str) -> str:
    """The class of hostile text a value belongs to, for the campaign's statistics."""
    categories = {unicodedata.category(c) for c in text}
    if not text:
        return "empty"
    if text.endswith("\n"):
        return "trailing newline"
    if "\x00" in text:
        return "NUL"
    if "Cc" in categories:
        return "control character"
    if "Cf" in categories:
        return "format character (RTL mark, BOM)"
    if any(ord(c) > 0xFFFF for c in text):
        return "astral character"
    if not text.isascii():
        return "non-ASCII"
    return "huge" if len(text) > 256 else "plain"


def judged(rule: str, value: str) -> Drawn:
    drawn = Drawn(value, verdict_of(rule, value))
    event(f"{rule}: {shape_of(value)}, {drawn.verdict}")
    return drawn


# --- hostile text ----------------------------------------------------------------------------

CONTROL = st.characters(codec="utf-8", categories=["Cc"])  # NUL, \n, \t, DEL, C1 controls
TRICKY = st.sampled_from(
    [
        "\x00",
        "\n",
        "\r\n",
        "\t",
        " ",
        "\u200f",  # right-to-left mark
        "\u202e",  # right-to-left override
        "\u2066",  # left-to-right isolate
        "\ufeff",  # byte order mark
        "\u00a0",  # no-break space
        "\u2028",  # line separator
        "\U0001f600",  # an astral character
        "\U000e0041",  # an astral tag character
        "\u0660",  # ARABIC-INDIC DIGIT ZERO (a Unicode digit, not [0-9])
        "\uff41",  # FULLWIDTH a
    ]
)
ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8")
HUGE_LENGTHS = st.sampled_from([64, 129, 257, 1025, 4097, 65_537, 1_000_001])


def _insert(text: str, piece: str, at: int) -> str:
    at = at % (len(text) + 1)
    return text[:at] + piece + text[at:]


def hostile(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Near-misses of valid values: one bad character, a trailing newline, a huge length."""
    return st.one_of(
        valid.map(lambda s: s + "\n"),
        valid.map(lambda s: s + "\r\n"),
        valid.map(lambda s: "\n" + s),
        st.builds(_insert, valid, st.one_of(CONTROL, TRICKY, ASTRAL), st.integers(0, 300)),
        st.builds(lambda s, n: (s * (n // max(len(s), 1) + 1))[:n], valid, HUGE_LENGTHS),
        st.text(st.characters(codec="utf-8"), max_size=30),
        st.just(""),
    )


def checked(rule: str, valid: st.SearchStrategy[str]) -> st.SearchStrategy[Drawn]:
    """Mostly valid values (so that whole requests are valid often enough to reach the
    database and the providers), often near-misses; each judged by `rule`."""
    return st.one_of(valid, valid, hostile(valid)).map(lambda v: judged(rule, v))


def optional(rule: str, valid: st.SearchStrategy[str]) -> st.SearchStrategy[Drawn]:
    """A field where "" means "not given" (a filter, a request id): empty is valid."""

    def judge(value: str) -> Drawn:
        return Drawn(value, VALID) if value == "" else judged(rule, value)

    return st.one_of(st.just(""), valid, valid, hostile(valid)).map(judge)


# --- identifiers -----------------------------------------------------------------------------

# The seed workspace: both keys, two executions (each test session has fresh databases).
SEED = "fuzz-seed"
# A few fixed workspaces so that writes meet existing rows; never the seed workspace, whose
# keys and executions the serving check relies on.
POOL_WORKSPACES = st.sampled_from(["fuzz-a", "fuzz-b", "Fuzz_C-9"])
WORKSPACES = st.one_of(POOL_WORKSPACES, st.from_regex(WORKSPACE, fullmatch=True))
AGENT_IDS = st.one_of(
    st.sampled_from(["agent-a", "agent-b", "a.b_c-d"]),
    st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True),
)
MODELS = st.one_of(
    st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "org/model@v1:latest"]),
    st.from_regex(r"[A-Za-z0-9._:/@-]{1,40}", fullmatch=True),
)
REQUEST_IDS = st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True)
# Generated keys carry a canary prefix that no product text contains, so that finding one in
# an error or an audit record means the key itself leaked.
KEY_CANARY = "sk-fuzz-"
API_KEYS = st.from_regex(r"[\x21-\x7e]{8,48}", fullmatch=True).map(lambda k: KEY_CANARY + k)


def parents(
    workspaces: st.SearchStrategy[str] = WORKSPACES, rule: str = "parent"
) -> st.SearchStrategy[Drawn]:
    return checked(rule, workspaces.map(lambda ws: f"workspaces/{ws}"))


def key_names(workspaces: st.SearchStrategy[str] = POOL_WORKSPACES) -> st.SearchStrategy[Drawn]:
    structured = st.builds(
        lambda ws, provider: f"workspaces/{ws}/apiKeys/{provider}",
        st.one_of(workspaces, hostile(workspaces)),
        st.one_of(st.sampled_from(PROVIDERS), hostile(st.sampled_from(PROVIDERS))),
    )
    return checked("key_name", structured)


def execution_names(workspaces: st.SearchStrategy[str] = WORKSPACES) -> st.SearchStrategy[Drawn]:
    structured = st.builds(
        lambda ws, id_: f"workspaces/{ws}/executions/{id_}", workspaces, st.uuids().map(str)
    )

    def judge(value: str) -> Drawn:
        if RULES["execution_name"].fullmatch(value):
            return Drawn(value, VALID)
        if RULES["execution_name"].fullmatch(value.lower()) and value.isascii():
            return Drawn(value, EITHER)  # an upper-case UUID: the contract does not say
        return Drawn(value, INVALID)

    return st.one_of(structured, hostile(structured), structured.map(str.upper)).map(judge)


# --- numbers ---------------------------------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
MAX_PAGE_SIZE = 1000


def page_sizes() -> st.SearchStrategy[Drawn]:
    """Negative is invalid; above the maximum is lowered to it (AIP-158), not refused."""
    sizes = st.one_of(st.sampled_from([0, 1, 2, 999, 1000, 1001, 2**31 - 1, -1, -(2**31)]), INT32)
    return sizes.map(lambda n: Drawn(n, INVALID if n < 0 else VALID))


def batch_sizes() -> st.SearchStrategy[Drawn]:
    sizes = st.one_of(st.sampled_from([0, 1, 1000, 1001, 2**31 - 1, -1, -(2**31)]), INT32)
    return sizes.map(lambda n: Drawn(n, INVALID if n < 0 else VALID if n <= 1000 else EITHER))


# Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


def timestamps() -> st.SearchStrategy[Drawn]:
    """An unset field (None), or a Timestamp at or past the edges of its range."""
    seconds = st.one_of(
        st.sampled_from(
            [MIN_SECONDS, MIN_SECONDS - 1, MAX_SECONDS, MAX_SECONDS + 1, 0, 1_780_000_000]
        ),
        st.sampled_from([-(2**63), 2**63 - 1]),
        st.integers(MIN_SECONDS, MAX_SECONDS),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(
        st.sampled_from([0, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]),
        st.integers(0, 999_999_999),
    )

    def judge(s: int, n: int) -> Drawn:
        ok = MIN_SECONDS <= s <= MAX_SECONDS and 0 <= n <= 999_999_999
        return Drawn(Timestamp(seconds=s, nanos=n), VALID if ok else INVALID)

    return st.one_of(st.none().map(lambda _: Drawn(None, VALID)), st.builds(judge, seconds, nanos))


def window(start: Drawn, end: Drawn) -> str:
    """A time window whose start is not before its end is the caller's error."""
    if start.value is None or end.value is None or INVALID in (start.verdict, end.verdict):
        return VALID
    s, e = start.value, end.value
    return INVALID if (s.seconds, s.nanos) >= (e.seconds, e.nanos) else VALID


FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.0000001, -1e-300, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def optional_float(low: float, high: float) -> st.SearchStrategy[Drawn]:
    def judge(x: float | None) -> Drawn:
        if x is None:
            return Drawn(None, VALID)
        return Drawn(x, VALID if math.isfinite(x) and low <= x <= high else INVALID)

    return st.one_of(st.none(), FLOATS).map(judge)


def optional_max_tokens() -> st.SearchStrategy[Drawn]:
    values = st.one_of(
        st.none(), st.sampled_from([0, 1, 16, 200_000, 200_001, -1, 2**31 - 1, -(2**31)]), INT32
    )
    return values.map(lambda n: Drawn(n, VALID if n is None or 1 <= n <= 200_000 else INVALID))


def enum_values(valid: tuple[int, ...]) -> st.SearchStrategy[Drawn]:
    values = st.one_of(st.sampled_from(valid), st.sampled_from([0, -1, 99, 2**31 - 1]), INT32)
    return values.map(lambda n: Drawn(n, VALID if n in valid else INVALID))


# --- base URLs -------------------------------------------------------------------------------

# Stands for the running emulator's URL, which replaces it when the request is sent. It is a
# URL of the same class (http, the allowlisted host, a port), so that a value is judged the
# same before and after; a near-miss the replacement no longer matches names port 9 (closed).
EMULATOR = "http://127.0.0.1:9"
# Refused by default: metadata, link-local, private and loopback destinations, and port 0.
FORBIDDEN_URLS = [
    "https://169.254.169.254",
    "https://169.254.169.254/latest/meta-data",
    "https://metadata.google.internal",
    "https://10.0.0.1",
    "https://192.168.1.1/v1",
    "https://172.16.0.1",
    "https://[fd00::1]",
    "https://[::1]",
    "https://[::ffff:169.254.169.254]",
    "https://0.0.0.0",
    "https://api.openai.com:0",
    "http://api.openai.com",  # plain http to a host that is not allowlisted
    "ftp://api.openai.com",
    "https://user:pass@api.openai.com",
    "https://api.openai.com/v1?x=1",
    "https://api.openai.com/#frag",
    "https://",
    "not a url",
]
ALLOWED_URLS = [
    "",
    EMULATOR,
    f"{EMULATOR}/v1",
    "https://api.openai.com",
    "https://api.anthropic.com",
]
# The operator allowlist the test settings builders give both services (in production,
# PROVIDER_ALLOWED_HOSTS): it admits the emulator on loopback.
ALLOWED_HOSTS = {"127.0.0.1", "localhost"}


def base_url_verdict(url: str) -> str:
    if url in ALLOWED_URLS:
        return VALID
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c.isspace() for c in url):
        return INVALID  # control characters and whitespace, wherever they are
    if url in FORBIDDEN_URLS:
        return INVALID
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return INVALID
    if parts.scheme not in ("http", "https") or not host or port == 0:
        return INVALID
    if parts.scheme == "http" and host not in ALLOWED_HOSTS:
        return INVALID
    try:
        address = ip_address(host)
    except ValueError:
        return EITHER  # a name: the contract decides by what it resolves to
    if host not in ALLOWED_HOSTS and not address.is_global:
        return INVALID
    return EITHER


def base_urls(candidates: list[str] | None = None) -> st.SearchStrategy[Drawn]:
    """`candidates`: the well-formed URLs that may be used (TestApiKey calls them)."""
    fine = st.sampled_from(candidates or ALLOWED_URLS)
    urls = st.one_of(fine, st.sampled_from(FORBIDDEN_URLS), hostile(fine))

    def judge(url: str) -> Drawn:
        drawn = Drawn(url, base_url_verdict(url))
        event(f"base_url: {shape_of(url)}, {drawn.verdict}")
        return drawn

    return urls.map(judge)


# --- page tokens -----------------------------------------------------------------------------


def encode_token(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


@dataclass(frozen=True)
class TokenRecipe:
    """How to make a page token from a genuine one of the seed listing, and what the contract
    says of the result when it is sent with the seed listing's own query."""

    kind: str  # "empty", "genuine", "field" (one field replaced or dropped), "whole", "text"
    field: str | None = None
    value: Any = None
    verdict: str = INVALID

    def make(self, genuine: str) -> str:
        if self.kind == "empty":
            return ""
        if self.kind == "genuine":
            return genuine
        if self.kind == "text":
            return str(self.value)
        if self.kind == "whole":
            return encode_token(self.value)
        decoded = decode_token(genuine)
        if self.value is DROP:
            decoded.pop(self.field or "", None)
        else:
            decoded[self.field or ""] = self.value
        return encode_token(decoded)

    def verdict_for(self, same_listing: bool) -> str:
        """A token is bound to the listing that issued it: elsewhere, only "" is valid."""
        if self.kind == "empty":
            return VALID
        return self.verdict if same_listing else INVALID


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()
WRONG_TYPES = [7, -1, 1.5, True, None, [], ["openai"], {}, {"a": 1}, "a\x00b", "\x00", "", "\n"]
HUGE_INTS = [10**30, 2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64]
EXTREME_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59+14:00",
    "0001-01-01T00:00:00",
    "2026-01-01T00:00:00",
    "not a time",
    "2026-13-01T00:00:00+00:00",
    "2026-01-01T00:00:00+00:00",
]


def text_cursor(value: Any) -> str:
    """A provider name to continue after: any printable string is a position."""
    return EITHER if isinstance(value, str) and value.isprintable() else INVALID


def id_cursor(value: Any) -> str:
    """A bigserial id to continue before: an int in PostgreSQL's bigint range."""
    return EITHER if type(value) is int and 0 <= value < 2**63 else INVALID


def time_cursor(value: Any) -> str:
    """A creation time with its offset, representable in UTC."""
    try:
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            return INVALID
        moment.astimezone(dt.UTC)
    except (TypeError, ValueError, OverflowError):
        return INVALID
    return EITHER


def uuid_cursor(value: Any) -> str:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return INVALID
    return EITHER


Judge = Callable[[Any], str]


def page_tokens(cursor: dict[str, tuple[list[Any], Judge]]) -> st.SearchStrategy[TokenRecipe]:
    """Tokens for a listing whose genuine tokens carry the `cursor` fields (each with values
    to try and the rule that judges them) and "q", the query the token is bound to."""
    replaced = st.one_of(
        *[
            st.sampled_from(values + WRONG_TYPES + HUGE_INTS).map(
                lambda v, name=name, judge=judge: TokenRecipe("field", name, v, judge(v))
            )
            for name, (values, judge) in cursor.items()
        ],
        st.sampled_from(["", "workspaces/other", 5, None, "q\x00", ["q"]]).map(
            lambda v: TokenRecipe("field", "q", v, INVALID)
        ),
    )
    return st.one_of(
        st.just(TokenRecipe("empty", verdict=VALID)),
        st.just(TokenRecipe("genuine", verdict=VALID)),
        replaced,
        st.sampled_from([*cursor, "q"]).map(lambda f: TokenRecipe("field", f, DROP, INVALID)),
        st.sampled_from([[], 5, "x", None, [1, 2], {"q": None}]).map(
            lambda v: TokenRecipe("whole", value=v)
        ),
        st.binary(min_size=1, max_size=40).map(lambda b: TokenRecipe("whole", value=b)),
        st.text(max_size=60).filter(bool).map(lambda t: TokenRecipe("text", value=t)),
        st.sampled_from(["%%%", "====", "eyJ", "e30", "bnVsbA", "W10", "\x00"]).map(
            lambda t: TokenRecipe("text", value=t)
        ),
    )


KEY_TOKENS = page_tokens({"provider": (["anthropic", "zzz", "a" * 5000], text_cursor)})
AUDIT_TOKENS = page_tokens({"id": ([0, 1, 0.5, "1"], id_cursor)})
EXECUTION_TOKENS = page_tokens(
    {
        "t": (EXTREME_TIMES, time_cursor),
        "id": (["not-a-uuid", "00000000-0000-0000-0000-000000000000"], uuid_cursor),
    }
)
