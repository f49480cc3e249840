"""Wire formats of the sim engine's responses: OpenAI and TGI, streamed and whole.

Streaming is the hot path (one chunk per token for hundreds of streams), so
each stream precomputes the bytes around a token once and a token costs one
concatenation; the JSON of every vocabulary token is encoded once at import.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from migserve_agent.sim_engine.text import VOCABULARY, Completion, logprob

_encode = msgspec.json.Encoder().encode

#: JSON string of each vocabulary token's text
_TEXT_JSON: tuple[bytes, ...] = tuple(_encode(t) for t in VOCABULARY)
#: TGI ``"token":{...}`` object of each vocabulary token
_TGI_TOKEN_JSON: tuple[bytes, ...] = tuple(
    _encode({"id": i, "text": t, "logprob": logprob(i), "special": False})
    for i, t in enumerate(VOCABULARY)
)

SSE_DONE = b"data: [DONE]\n\n"
TGI_FINISH_REASONS = {"length": "length", "stop": "stop_sequence"}


def piece_json(completion: Completion, index: int) -> bytes:
    """JSON string of the visible text of generated token ``index``."""
    piece = completion.pieces[index]
    token_id = completion.token_ids[index]
    return _TEXT_JSON[token_id] if piece == VOCABULARY[token_id] else _encode(piece)


def usage(prompt_tokens: int, completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion.generated_tokens,
        "total_tokens": prompt_tokens + completion.generated_tokens,
    }


class OpenAIStream:
    """The SSE chunks of one streamed chat or text completion."""

    def __init__(
        self, *, kind: Literal["chat", "text"], request_id: str, created: int, model: str
    ) -> None:
        self._chat = kind == "chat"
        obj = "chat.completion.chunk" if self._chat else "text_completion"
        head = _encode({"id": request_id, "object": obj, "created": created, "model": model})
        self._head = b"data: " + head[:-1]
        field = b'"delta":{"content":' if self._chat else b'"text":'
        self._prefix = self._head + b',"choices":[{"index":0,' + field
        close = b"}" if self._chat else b""
        self._suffix = close + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def token(self, text_json: bytes) -> bytes:
        return self._prefix + text_json + self._suffix

    def opening(self) -> bytes:
        """The role chunk a chat stream starts with (empty for text completions)."""
        if not self._chat:
            return b""
        return (
            self._head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def closing(self, finish_reason: str, usage_obj: dict[str, int] | None) -> bytes:
        """The finish chunk, the usage chunk if asked for, and ``[DONE]``."""
        body = b'"delta":{}' if self._chat else b'"text":""'
        out = (
            self._head
            + b',"choices":[{"index":0,'
            + body
            + b',"logprobs":null,"finish_reason":'
            + _encode(finish_reason)
            + b"}]}\n\n"
        )
        if usage_obj is not None:
            out += self._head + b',"choices":[],"usage":' + _encode(usage_obj) + b"}\n\n"
        return out + SSE_DONE


def chat_completion(
    *, request_id: str, created: int, model: str, completion: Completion, prompt_tokens: int
) -> bytes:
    return _encode(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "migserve-sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion),
        }
    )


def text_completion(
    *, request_id: str, created: int, model: str, completion: Completion, prompt_tokens: int
) -> bytes:
    return _encode(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "migserve-sim",
            "choices": [
                {
                    "index": 0,
                    "text": completion.text,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion),
        }
    )


def tgi_stream_token(index: int, completion: Completion, *, seed: int, input_length: int) -> bytes:
    """The TGI SSE event of generated token ``index`` (the last one carries the details)."""
    token = _TGI_TOKEN_JSON[completion.token_ids[index]]
    head = b'data:{"index":%d,"token":' % (index + 1) + token
    if index + 1 < completion.generated_tokens:
        return head + b',"generated_text":null,"details":null}\n\n'
    details = {
        "finish_reason": TGI_FINISH_REASONS[completion.finish_reason],
        "generated_tokens": completion.generated_tokens,
        "seed": seed,
        "input_length": input_length,
    }
    tail = _encode({"generated_text": completion.text, "details": details})
    return head + b"," + tail[1:] + b"\n\n"


def tgi_generate(completion: Completion, *, seed: int, with_tokens: bool) -> bytes:
    """The body of a TGI /generate response."""
    tokens: list[Any] = []
    if with_tokens:
        tokens = [
            {"id": i, "text": VOCABULARY[i], "logprob": logprob(i), "special": False}
            for i in completion.token_ids
        ]
    details = {
        "finish_reason": TGI_FINISH_REASONS[completion.finish_reason],
        "generated_tokens": completion.generated_tokens,
        "seed": seed,
        "prefill": [],
        "tokens": tokens,
    }
    return _encode({"generated_text": completion.text, "details": details})
