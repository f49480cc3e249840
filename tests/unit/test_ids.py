"""Subject tokens: injective, subject-safe, reversible."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from migserve_shared import subjects
from migserve_shared.ids import InvalidTokenError, decode_token, encode_token

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


@pytest.mark.parametrize(
    ("model_id", "token"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB_2fSmolLM2-135M-Instruct"),
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama_2fLlama-3_2e1-8B-Instruct"),
        ("org/model:v2.1", "org_2fmodel_3av2_2e1"),
        ("a_b", "a_5fb"),
        ("a.b", "a_2eb"),
        ("ä", "_c3_a4"),
    ],
)
def test_known_tokens(model_id: str, token: str) -> None:
    assert encode_token(model_id) == token
    assert decode_token(token) == model_id


def test_distinct_ids_that_naive_escaping_would_merge() -> None:
    ids = ["a/b", "a_b", "a.b", "a_2fb", "a:b", "a-b"]
    assert len({encode_token(i) for i in ids}) == len(ids)


@given(st.text(min_size=1, max_size=64))
def test_round_trip_and_safety(value: str) -> None:
    token = encode_token(value)
    assert SAFE.match(token)
    assert decode_token(token) == value


@given(st.text(min_size=1, max_size=16), st.text(min_size=1, max_size=16))
def test_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize("bad", ["", "a.b", "a_4", "a_zz", "a_41", "_ff", "a b"])
def test_malformed_tokens_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidTokenError):
        decode_token(bad)


def test_empty_id_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_token("")


def test_subjects_are_single_tokens_per_id() -> None:
    subject = subjects.infer("org/model:v2.1")
    assert subject == "llm.infer.org_2fmodel_3av2_2e1"
    assert subjects.event("slo.violation", "org/m") == "llm.evt.slo.violation.org_2fm"
    assert subjects.agent_commands("node.1") == "llm.cmd.agent.node_2e1"
    for s in (subject, subjects.cancel("job/1"), subjects.agent_consumer("n:1")):
        assert " " not in s and "*" not in s and ">" not in s
