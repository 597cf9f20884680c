"""Bytes that are not a well-formed request, sent to every RPC the protos declare.

A message that does not parse, or that carries invalid UTF-8 in a string field, is the
caller's error: the caller is authorized first (a denied one is answered and audited as
for any other call), then answered INVALID_ARGUMENT. Bytes that happen to parse are only
held to the general properties.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.properties import CALLERS, KV, METHODS, Method, callers, check_call
from tests.fuzz.stack import ANONYMOUS, IDENTITIES, FuzzStack
from tests.fuzz.strategies import EITHER, INVALID, Drawn

WIRE_VARINT, WIRE_LEN = 0, 2
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"abc\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def string_fields(method: Method) -> list[int]:
    return [
        f.number
        for f in method.request_class.DESCRIPTOR.fields
        if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated
    ]


def plausible(method: Method) -> bytes:
    """A request with every top-level string and integer field set: something to cut up."""
    message = method.request_class()
    for f in message.DESCRIPTOR.fields:
        if f.is_repeated:
            continue
        if f.type == FieldDescriptor.TYPE_STRING:
            setattr(message, f.name, "workspaces/fuzz-a/apiKeys/openai")
        elif f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
            setattr(message, f.name, 1)
    return message.SerializeToString()


def judge(method: Method, payload: bytes) -> Drawn:
    """INVALID when the bytes do not parse as the request; otherwise the contract of the
    parsed fields decides, which this test does not model."""
    request: Message = method.request_class()
    try:
        request.ParseFromString(payload)
    except DecodeError:
        return Drawn(payload, INVALID)
    return Drawn(payload, EITHER)


@st.composite
def payloads(draw: st.DrawFn, method: Method) -> Drawn:
    good = plausible(method)
    numbers = string_fields(method) or [1]
    shapes = [
        st.binary(max_size=200),
        # A string field holding invalid UTF-8, after a well-formed prefix.
        st.builds(
            lambda n, bad, prefix: prefix + tag(n, WIRE_LEN) + varint(len(bad)) + bad,
            st.sampled_from(numbers),
            st.sampled_from(BAD_UTF8),
            st.sampled_from([b"", good]),
        ),
        # A well-formed request cut short, or with a length that runs past the end.
        st.integers(1, max(len(good) - 1, 1)).map(lambda cut: good[:cut]),
        st.sampled_from(numbers).map(lambda n: tag(n, WIRE_LEN) + varint(2**31) + b"ab"),
        st.sampled_from(numbers).map(lambda n: tag(n, WIRE_LEN) + varint(2**64 - 1)),
        # Wrong wire type, field number 0, an unterminated group, an unknown field.
        st.sampled_from(numbers).map(lambda n: tag(n, WIRE_VARINT) + varint(5)),
        st.just(b"\x00\x01"),
        st.just(tag(7, 3)),
        st.just(good + tag(999, WIRE_VARINT) + varint(1)),
    ]
    return judge(method, draw(st.one_of(*shapes)))


@st.composite
def raw_calls(draw: st.DrawFn) -> tuple[str, Drawn, str]:
    path = draw(st.sampled_from(sorted(METHODS)))
    allowed = sorted(CALLERS.get(path, IDENTITIES))
    who = draw(callers(allowed[0]) if allowed else st.sampled_from(IDENTITIES))
    return path, draw(payloads(METHODS[path])), who


REVEAL = KV + "RevealApiKey"
BAD_NAME = tag(1, WIRE_LEN) + varint(2) + b"\xff\xfe"


@fuzz_settings
@given(call=raw_calls())
@example(call=(REVEAL, Drawn(BAD_NAME, INVALID), "app"))
@example(call=(REVEAL, Drawn(BAD_NAME, INVALID), ANONYMOUS))
@example(call=(REVEAL, Drawn(BAD_NAME, INVALID), "execution"))
@example(call=(REVEAL, Drawn(b"\x0a\xff\xff\xff\xff\x0f", INVALID), "execution"))
@example(call=(KV + "SetApiKey", Drawn(BAD_NAME, INVALID), "app"))
@example(call=(KV + "RewrapApiKeys", Drawn(b"\x08", INVALID), "admin"))
@example(call=("/execution.v1.ExecutionService/Execute", Drawn(BAD_NAME, INVALID), "app"))
def test_malformed_requests(fuzz_stack: FuzzStack, call: tuple[str, Drawn, str]) -> None:
    path, payload, who = call
    check_call(fuzz_stack, path, payload.value, payload.verdict, who, malformed=True)


@fuzz_settings
@given(path=st.sampled_from(sorted(METHODS)), who=st.sampled_from(IDENTITIES))
def test_plausible_requests_as_anyone(fuzz_stack: FuzzStack, path: str, who: str) -> None:
    """Every RPC, as every identity: the policy holds for each, an RPC without fields too."""
    payload = judge(METHODS[path], plausible(METHODS[path]))
    check_call(fuzz_stack, path, payload.value, EITHER, who)


def test_every_rpc_has_its_callers() -> None:
    """Every RPC the protos declare is fuzzed here with the identities that may call it;
    an RPC added later must be given its callers (and, if it takes input, a typed test)."""
    assert set(METHODS) <= set(CALLERS), sorted(set(METHODS) - set(CALLERS))
