"""Wire messages: round trips, tagged unions, and typed errors on bad payloads."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from migserve_shared.errors import BadMessageError, ErrorCode
from migserve_shared.messages import (
    EVENT_KINDS,
    CreateInstance,
    Demand,
    InferenceJob,
    InstanceRecord,
    JobEnd,
    JobError,
    ModelSpec,
    RetireInstance,
    SliceCreated,
    TokenChunk,
    decode_command,
    decode_event,
    decode_instance,
    decode_job,
    decode_model_spec,
    decode_reply,
    encode,
    event_kind,
    event_subject_id,
)

SPEC = ModelSpec(model_id="org/model:v2.1", memory_mb=4000, tpot_slo_ms=40)


@pytest.mark.parametrize(
    ("msg", "decode"),
    [
        (SPEC, decode_model_spec),
        (Demand(model_id="m", trace_id="t"), decode_event),
        (SliceCreated(node="n", gpu_index=0, profile="3g.20gb", start=4), decode_event),
        (
            CreateInstance(
                command_id="c", instance_id="i", model=SPEC, gpu_index=0, profile="1g.5gb", start=6
            ),
            decode_command,
        ),
        (RetireInstance(command_id="c", instance_id="i"), decode_command),
        (TokenChunk(text="hi", index=3), decode_reply),
        (JobEnd(finish_reason="length", completion_tokens=5), decode_reply),
        (JobError(code=ErrorCode.TIMEOUT, message="late"), decode_reply),
        (InferenceJob(job_id="j", model="m", reply_to="_INBOX.x", deadline=1.0), decode_job),
        (
            InstanceRecord(
                instance_id="i", model_id="m", node="n", gpu_index=0, profile="1g.5gb", start=0
            ),
            decode_instance,
        ),
    ],
)
def test_round_trip(msg: object, decode: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[operator]


def test_events_are_tagged_by_kind() -> None:
    raw = encode(Demand(model_id="m"))
    assert msgspec.json.decode(raw)["kind"] == "demand"
    assert "slo.violation" in EVENT_KINDS and "node.inventory" in EVENT_KINDS
    assert event_kind(Demand(model_id="m")) == "demand"
    assert event_subject_id(Demand(model_id="a/b")) == "a/b"


def test_unknown_fields_from_newer_services_are_ignored() -> None:
    newer = b'{"model_id":"m","memory_mb":1,"tpot_slo_ms":1,"added_later":{"x":1}}'
    assert decode_model_spec(newer).model_id == "m"


def test_new_fields_have_defaults_so_old_payloads_decode() -> None:
    old = b'{"kind":"demand","model_id":"m"}'
    evt = decode_event(old)
    assert isinstance(evt, Demand) and evt.waiting == 1 and evt.event_id


@pytest.mark.parametrize(
    ("payload", "decode", "fragment"),
    [
        (b"not json", decode_event, "bad event"),
        (b'{"kind":"nope"}', decode_event, "nope"),
        (b'{"type":"create_instance","command_id":"c"}', decode_command, "instance_id"),
        (b'{"model_id":"","memory_mb":1,"tpot_slo_ms":1}', decode_model_spec, "model_id"),
        (b'{"model_id":"m","memory_mb":0,"tpot_slo_ms":1}', decode_model_spec, "memory_mb"),
        (b'{"model_id":"m","memory_mb":1,"tpot_slo_ms":-1}', decode_model_spec, "tpot_slo_ms"),
        (
            b'{"model_id":"m","memory_mb":1,"tpot_slo_ms":1,"engine":"gpt"}',
            decode_model_spec,
            "engine",
        ),
        (b'{"type":"token"}', decode_reply, "text"),
        (b'{"job_id":"j"}', decode_job, "model"),
    ],
)
def test_bad_payloads_raise_typed_errors(payload: bytes, decode: object, fragment: str) -> None:
    with pytest.raises(BadMessageError, match=fragment) as info:
        decode(payload)  # type: ignore[operator]
    assert info.value.code is ErrorCode.BAD_MESSAGE


@given(st.binary(max_size=200))
def test_decoders_never_raise_anything_else(payload: bytes) -> None:
    for decode in (decode_event, decode_command, decode_reply, decode_job, decode_model_spec):
        with contextlib.suppress(BadMessageError):
            decode(payload)
