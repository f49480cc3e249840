"""Fuzzing every msgspec decoder of migserve_shared.messages (hypothesis).

Whatever arrives on the bus or sits in a KV bucket, a decoder returns a
message or raises BadMessageError: never another exception, never a hang.
Inputs: random bytes, random JSON values, deeply nested JSON, and valid
messages (generated from each type's own schema, so new fields and types are
covered without touching this file) mutated at the JSON-tree and byte level.
Valid messages must also round-trip unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from migserve_shared import messages
from migserve_shared.errors import BadMessageError
from msgspec import inspect as mi

Decoder = Callable[[bytes | str], Any]

#: decoder name -> the type it decodes
DECODED: dict[str, Any] = {
    "decode_event": messages.Event,
    "decode_command": messages.Command,
    "decode_job": messages.InferenceJob,
    "decode_reply": messages.JobReply,
    "decode_model_spec": messages.ModelSpec,
    "decode_node_state": messages.NodeState,
    "decode_instance": messages.InstanceRecord,
    "decode_plan": messages.Plan,
}
NAMES = sorted(DECODED)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decoder(name: str) -> Decoder:
    return getattr(messages, name)  # type: ignore[no-any-return]


def decodes_or_rejects(decode: Decoder, data: bytes | str) -> Any:
    """The message, or None when BadMessageError says why; anything else fails."""
    try:
        return decode(data)
    except BadMessageError as exc:
        assert str(exc)
        return None


# Strategies --------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def valid(info: mi.Type) -> st.SearchStrategy[Any]:
    """Values that satisfy a msgspec type, read from its schema (constraints included)."""
    if isinstance(info, mi.StructType):
        fields = {f.name: valid(f.type) for f in info.fields}
        return st.fixed_dictionaries(fields).map(lambda kw: info.cls(**kw))
    if isinstance(info, mi.UnionType):
        return st.one_of([valid(t) for t in info.types])
    if isinstance(info, mi.StrType):
        return _strings(info)
    if isinstance(info, mi.IntType):
        lo = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(2**40))
        hi = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else 2**40)
        return st.integers(min_value=lo, max_value=hi)
    if isinstance(info, mi.FloatType):
        lo = info.ge if info.ge is not None else info.gt
        hi = info.le if info.le is not None else info.lt
        return st.floats(
            min_value=lo, max_value=hi, exclude_min=info.gt is not None,
            exclude_max=info.lt is not None, allow_nan=False, allow_infinity=False,
        )  # fmt: skip
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.EnumType):
        return st.sampled_from(list(info.cls))
    if isinstance(info, mi.ListType):
        return st.lists(valid(info.item_type), max_size=3)
    if isinstance(info, mi.DictType):
        return st.dictionaries(valid(info.key_type), valid(info.value_type), max_size=3)
    if isinstance(info, mi.AnyType):
        return json_values
    raise AssertionError(f"no strategy for {info!r}: extend valid() in {__file__}")


def _strings(info: mi.StrType) -> st.SearchStrategy[str]:
    lo, hi = info.min_length or 0, min(info.max_length or 24, 24)
    if info.pattern is None:
        return st.text(min_size=lo, max_size=hi)
    return st.from_regex(info.pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi)


def messages_of(name: str) -> st.SearchStrategy[Any]:
    return valid(mi.type_info(DECODED[name]))


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A valid message, then one mutation of its JSON tree or its bytes."""
    tree = msgspec.to_builtins(draw(messages_of(name)))
    how = draw(st.sampled_from(["replace", "delete", "add", "wrap", "bytes"]))
    if how == "bytes":
        data = bytearray(json.dumps(tree).encode())
        at = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["cut", "insert", "flip"]))
        if op == "cut":
            return bytes(data[:at])
        byte = draw(st.integers(min_value=0, max_value=255))
        if op == "insert" or at == len(data):
            data.insert(at, byte)
        else:
            data[at] ^= byte or 1
        return bytes(data)
    parent, key = _pick(draw, tree)
    if how == "replace" and parent is not None:
        parent[key] = draw(json_values)
    elif how == "delete" and isinstance(parent, dict):
        del parent[key]
    elif how == "add":
        target = parent[key] if parent is not None else tree
        if isinstance(target, dict):
            target[draw(st.text(max_size=8))] = draw(json_values)
        else:
            tree = {"value": tree}
    elif parent is not None:  # wrap
        parent[key] = [parent[key]]
    return json.dumps(tree).encode()


def _pick(draw: st.DrawFn, tree: Any) -> tuple[Any, Any]:
    """A (container, key) somewhere in ``tree``; (None, None) for a scalar tree."""
    spots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            spots.append((node, k))
            if isinstance(v, dict | list):
                walk(v)

    if isinstance(tree, dict | list):
        walk(tree)
    return draw(st.sampled_from(spots)) if spots else (None, None)


# Tests -------------------------------------------------------------------------------
def test_every_decoder_is_fuzzed() -> None:
    kind = type(messages.decode_event)
    found = {name for name, value in vars(messages).items() if isinstance(value, kind)}
    assert found == set(DECODED), "add the new decoder and its type to DECODED"


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(name: str, data: bytes) -> None:
    decodes_or_rejects(decoder(name), data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(value=json_values)
def test_random_json(name: str, value: Any) -> None:
    decodes_or_rejects(decoder(name), json.dumps(value).encode())


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_including_lone_surrogates(name: str, text: str) -> None:
    decodes_or_rejects(decoder(name), text + "\udcff")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000, b'{"a":' * 50_000, b'{"x":' + b"[" * 100_000, b"1e999999", b"\x00" * 1000],
    ids=["arrays", "objects", "inside-a-field", "huge-exponent", "nul-bytes"],
)
def test_pathological_inputs(name: str, data: bytes) -> None:
    assert decodes_or_rejects(decoder(name), data) is None


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_valid_messages_round_trip(name: str, data: st.DataObject) -> None:
    msg = data.draw(messages_of(name))
    decoded = decoder(name)(messages.encode(msg))
    assert _same(msgspec.to_builtins(decoded), msgspec.to_builtins(msg))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_valid_messages(name: str, data: st.DataObject) -> None:
    raw = data.draw(mutated(name))
    decode = decoder(name)
    msg = decodes_or_rejects(decode, raw)
    if msg is not None:  # whatever it accepted encodes to something it accepts again
        assert _same(msgspec.to_builtins(decode(messages.encode(msg))), msgspec.to_builtins(msg))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)
