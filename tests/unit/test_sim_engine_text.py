"""Simulated text and request decoding of the sim engine (pure)."""

from __future__ import annotations

import json

import pytest
from migserve_agent.sim_engine.schemas import (
    RequestError,
    chat_request,
    completion_request,
    tgi_request,
)
from migserve_agent.sim_engine.text import VOCABULARY, complete, count_tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("hello world!", 4), ("  a \n b\tc ", 3)],
)
def test_count_tokens(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_same_seed_and_prompt_give_same_text() -> None:
    a = complete("tell me", seed=7, max_tokens=40)
    assert a == complete("tell me", seed=7, max_tokens=40)
    assert a.text != complete("tell me", seed=8, max_tokens=40).text
    assert a.text != complete("tell you", seed=7, max_tokens=40).text


def test_length_finish_and_pieces() -> None:
    c = complete("p", seed=1, max_tokens=25)
    assert c.finish_reason == "length"
    assert c.generated_tokens == 25
    assert "".join(c.pieces) == c.text
    assert all(VOCABULARY[i] == p for i, p in zip(c.token_ids, c.pieces, strict=True))


def test_stop_sequence_cuts_before_it_for_openai_and_keeps_it_for_tgi() -> None:
    full = complete("p", seed=3, max_tokens=30)
    stop = full.pieces[5]  # the sixth token's text appears in the output
    first = full.text.index(stop)
    openai = complete("p", seed=3, max_tokens=30, stop=[stop])
    assert openai.finish_reason == "stop"
    assert openai.stop_sequence == stop
    assert openai.text == full.text[:first]
    assert "".join(openai.pieces) == openai.text
    assert openai.generated_tokens <= 6
    tgi = complete("p", seed=3, max_tokens=30, stop=[stop], include_stop=True)
    assert tgi.text == "".join(full.pieces[: tgi.generated_tokens])
    assert tgi.text.endswith(stop) or stop in tgi.text
    assert tgi.generated_tokens == openai.generated_tokens


def test_stop_spanning_tokens_and_earliest_stop_wins() -> None:
    full = complete("q", seed=5, max_tokens=30)
    spanning = full.pieces[3][-2:] + full.pieces[4][:2]
    c = complete("q", seed=5, max_tokens=30, stop=["never-there", spanning])
    assert c.finish_reason == "stop"
    assert c.text == full.text[: full.text.index(spanning)]
    later = full.pieces[10]
    earlier = full.pieces[2]
    c2 = complete("q", seed=5, max_tokens=30, stop=[later, earlier])
    assert c2.text == full.text[: full.text.index(earlier)]


def test_stop_not_found_means_length() -> None:
    c = complete("q", seed=5, max_tokens=10, stop=["zzz"])
    assert c.finish_reason == "length"
    assert c.stop_sequence is None


def _chat(**body: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hello there"}], **body}).encode()


def test_chat_request_fields() -> None:
    req = chat_request(
        _chat(max_tokens=5, stop="x", seed=3, stream=True, stream_options={"include_usage": True}),
        max_stop_sequences=4,
    )
    assert (req.max_tokens, req.stop, req.seed, req.stream, req.include_usage) == (
        5,
        ("x",),
        3,
        True,
        True,
    )
    assert req.prompt_tokens == 4 + 2 + 2  # framing + "hello" + "there"


def test_chat_content_parts_and_max_completion_tokens() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}],
        "max_completion_tokens": 9,
        "unknown_field": {"ignored": True},
    }
    req = chat_request(json.dumps(body).encode(), max_stop_sequences=4)
    assert req.max_tokens == 9
    assert req.prompt_tokens == 5


@pytest.mark.parametrize(
    ("body", "code", "match"),
    [
        (b"", "invalid_json", "empty"),
        (b"{not json", "invalid_json", "malformed JSON"),
        (b"[1]", "invalid_request", "Expected `object`"),
        (b"{}", "invalid_request", "messages"),
        (b'{"messages": "hi"}', "invalid_request", r"\$\.messages"),
        (_chat(max_tokens=0), "invalid_request", "max_tokens"),
        (_chat(max_tokens="5"), "invalid_request", "max_tokens"),
        (_chat(temperature=3), "invalid_request", "temperature"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "invalid_request", "at most 4"),
        (_chat(stop=""), "invalid_request", "empty"),
        (_chat(n=2), "invalid_request", "n must be 1"),
        (_chat(stream="yes"), "invalid_request", "stream"),
    ],
)
def test_chat_request_rejects(body: bytes, code: str, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        chat_request(body, max_stop_sequences=4)
    assert info.value.code == code


@pytest.mark.parametrize(("prompt", "tokens"), [("hello there", 4), (["abc"], 1), ([5, 6, 7], 3)])
def test_completion_prompt_forms(prompt: object, tokens: int) -> None:
    req = completion_request(json.dumps({"prompt": prompt}).encode(), max_stop_sequences=4)
    assert req.prompt_tokens == tokens


@pytest.mark.parametrize("prompt", [None, [], ["a", "b"], [1, "a"], 3])
def test_completion_rejects_bad_prompts(prompt: object) -> None:
    with pytest.raises(RequestError, match="prompt"):
        completion_request(json.dumps({"prompt": prompt}).encode(), max_stop_sequences=4)


def test_tgi_request() -> None:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 3, "stop": ["."], "details": True}}
    req = tgi_request(json.dumps(body).encode(), max_stop_sequences=4, stream=True)
    assert (req.max_tokens, req.stop, req.details, req.stream) == (3, (".",), True, True)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputs": ""},
        {"inputs": 3},
        {"inputs": "x", "parameters": {"max_new_tokens": 0}},
        {"inputs": "x", "parameters": {"temperature": 0}},
        {"inputs": "x", "parameters": {"stop": "x"}},
    ],
)
def test_tgi_request_rejects(body: dict[str, object]) -> None:
    with pytest.raises(RequestError):
        tgi_request(json.dumps(body).encode(), max_stop_sequences=4, stream=False)
