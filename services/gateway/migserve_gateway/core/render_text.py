"""Response bodies for prompt completions: OpenAI ``text_completion`` and TGI's.

Stream renderers share the shape of ``render.ChunkRenderer`` (``token``,
``end``, ``error``) so one streaming response serves every API.
"""

from __future__ import annotations

from typing import Final

import msgspec

from migserve_gateway.core.errors import ApiError, error_body
from migserve_gateway.core.render import DONE, Usage

_encoder = msgspec.json.Encoder()

#: our finish reasons -> TGI's
TGI_FINISH: Final = {"stop": "eos_token", "length": "length", "cancelled": "length"}


class _TextChoice(msgspec.Struct, frozen=True):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: str | None = None


class TextCompletion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[_TextChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


def text_completion_body(
    *, completion_id: str, created: int, model: str, text: str, finish_reason: str, used: Usage
) -> bytes:
    """The JSON body of a non-streaming OpenAI completion."""
    choice = _TextChoice(text, finish_reason=finish_reason)
    return _encoder.encode(
        TextCompletion(id=completion_id, created=created, model=model, choices=[choice], usage=used)
    )


class TextChunkRenderer:
    """Renders one streamed OpenAI completion as SSE ``text_completion`` chunks."""

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._id, self._created, self._model = completion_id, created, model
        self._include_usage = include_usage

    def _chunk(self, choices: list[_TextChoice], used: Usage | None = None) -> bytes:
        body = TextCompletion(
            id=self._id, created=self._created, model=self._model, choices=choices, usage=used
        )
        return b"data: " + _encoder.encode(body) + b"\n\n"

    def token(self, text: str, *, first: bool = False) -> bytes:
        return self._chunk([_TextChoice(text)])

    def end(self, finish_reason: str, used: Usage) -> bytes:
        out = self._chunk([_TextChoice("", finish_reason=finish_reason)])
        if self._include_usage:
            out += self._chunk([], used)
        return out + DONE

    @staticmethod
    def error(err: ApiError) -> bytes:
        """An error event, then [DONE] (as ``ChunkRenderer.error``)."""
        return b"data: " + error_body(err) + b"\n\n" + DONE


# --- TGI -------------------------------------------------------------------------------------
class TgiToken(msgspec.Struct, frozen=True):
    id: int
    text: str
    logprob: float | None = None
    special: bool = False


class _StreamDetails(msgspec.Struct, frozen=True):
    finish_reason: str
    generated_tokens: int
    seed: int | None = None


class _StreamEvent(msgspec.Struct, frozen=True):
    token: TgiToken
    generated_text: str | None = None
    details: _StreamDetails | None = None


class _Details(msgspec.Struct, frozen=True):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[TgiToken]
    tokens: list[TgiToken]


class _Generated(msgspec.Struct, frozen=True):
    generated_text: str
    details: _Details | None = None


class _TgiError(msgspec.Struct, frozen=True):
    error: str
    error_type: str


def tgi_error_type(status: int) -> str:
    if status in (429, 503):
        return "overloaded"
    return "validation" if status < 500 else "generation"


def tgi_error_body(err: ApiError) -> bytes:
    """TGI's error shape: ``{"error": message, "error_type": kind}``."""
    return _encoder.encode(_TgiError(err.message, tgi_error_type(err.status)))


def tgi_generated(
    texts: list[str], finish_reason: str, *, seed: int | None, details: bool, as_list: bool
) -> bytes:
    """``POST /generate`` (one object) or ``POST /`` (a list of one) without streaming."""
    found = _Details(
        finish_reason=TGI_FINISH.get(finish_reason, "length"),
        generated_tokens=len(texts),
        seed=seed,
        prefill=[],
        tokens=[TgiToken(i, t) for i, t in enumerate(texts)],
    )
    body = _Generated("".join(texts), found if details else None)
    return _encoder.encode([body] if as_list else body)


class TgiStreamRenderer:
    """TGI's ``/generate_stream`` events: one per token, the last with the whole text."""

    def __init__(self, *, seed: int | None) -> None:
        self._seed = seed
        self._texts: list[str] = []

    def token(self, text: str, *, first: bool = False) -> bytes:
        event = _StreamEvent(TgiToken(len(self._texts), text))
        self._texts.append(text)
        return b"data:" + _encoder.encode(event) + b"\n\n"

    def end(self, finish_reason: str, used: Usage) -> bytes:
        details = _StreamDetails(
            TGI_FINISH.get(finish_reason, "length"), used.completion_tokens, self._seed
        )
        last = TgiToken(len(self._texts), "", special=True)
        event = _StreamEvent(last, "".join(self._texts), details)
        return b"data:" + _encoder.encode(event) + b"\n\n"

    @staticmethod
    def error(err: ApiError) -> bytes:
        return b"data:" + tgi_error_body(err) + b"\n\n"
