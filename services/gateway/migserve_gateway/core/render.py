"""OpenAI response bodies: SSE chunks, the chat completion, the model list.

Streaming is the hot path: a :class:`ChunkRenderer` pre-encodes everything
of a chunk except the token text, so each token costs one string encode and
two concatenations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec
from migserve_shared.messages import ModelSpec

from migserve_gateway.core.errors import ApiError, error_body

DONE: Final = b"data: [DONE]\n\n"
OWNED_BY: Final = "migserve"

_encoder = msgspec.json.Encoder()


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


class _Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class _Choice(msgspec.Struct, frozen=True):
    index: int
    message: _Message
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[_Choice]
    usage: Usage
    system_fingerprint: str | None = None


def completion_body(
    *, completion_id: str, created: int, model: str, text: str, finish_reason: str, used: Usage
) -> bytes:
    """The JSON body of a non-streaming chat completion."""
    choice = _Choice(0, _Message("assistant", text), finish_reason)
    return _encoder.encode(
        ChatCompletion(id=completion_id, created=created, model=model, choices=[choice], usage=used)
    )


class ChunkRenderer:
    """Renders one streamed completion as SSE ``data:`` lines of chat.completion.chunk."""

    __slots__ = ("_end_head", "_first_head", "_head", "_include_usage", "_tail", "_usage_head")

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        head = _encoder.encode(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
            }
        )[:-1]
        self._include_usage = include_usage
        choice = b',"choices":[{"index":0,"delta":{'
        self._first_head = b"data: " + head + choice + b'"role":"assistant","content":'
        self._head = b"data: " + head + choice + b'"content":'
        usage_null = b',"usage":null' if include_usage else b""
        self._tail = b'},"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        self._end_head = b"data: " + head + choice + b'},"logprobs":null,"finish_reason":'
        self._usage_head = b"data: " + head + b',"choices":[],"usage":'

    def token(self, text: str, *, first: bool = False) -> bytes:
        """One token chunk; the first one also carries the assistant role."""
        head = self._first_head if first else self._head
        return head + _encoder.encode(text) + self._tail

    def end(self, finish_reason: str, used: Usage) -> bytes:
        """The final chunk (finish reason), the usage chunk if asked for, and [DONE]."""
        usage_null = b',"usage":null' if self._include_usage else b""
        out = self._end_head + _encoder.encode(finish_reason) + b"}]" + usage_null + b"}\n\n"
        if self._include_usage:
            out += self._usage_head + _encoder.encode(used) + b"}\n\n"
        return out + DONE

    @staticmethod
    def error(err: ApiError) -> bytes:
        """An error event that ends a stream that already sent tokens, then [DONE]

        (as vLLM does: OpenAI's clients raise on the error object and stop at [DONE]).
        """
        return b"data: " + error_body(err) + b"\n\n" + DONE


class _ModelCard(msgspec.Struct, frozen=True):
    id: str
    created: int
    object: str = "model"
    owned_by: str = OWNED_BY


class _ModelList(msgspec.Struct, frozen=True):
    data: list[_ModelCard]
    object: str = "list"


def model_list_body(specs: Iterable[ModelSpec]) -> bytes:
    """``GET /v1/models`` in OpenAI's list format."""
    cards = [_ModelCard(id=s.model_id, created=int(s.registered_at)) for s in specs]
    return _encoder.encode(_ModelList(data=cards))


def spec_body(spec: ModelSpec) -> bytes:
    return _encoder.encode(spec)


def specs_body(specs: Iterable[ModelSpec]) -> bytes:
    return _encoder.encode({"object": "list", "data": list(specs)})
