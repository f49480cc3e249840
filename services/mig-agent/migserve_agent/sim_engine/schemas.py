"""Request bodies the sim engine accepts (OpenAI and TGI), decoded and validated once.

Unknown fields are ignored, as real servers do; known fields are type-checked.
Each decoder turns a body into a :class:`GenerationRequest` or raises
:class:`RequestError` with a message that names the field and value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta

from migserve_agent.sim_engine.text import CHAT_MESSAGE_OVERHEAD_TOKENS, count_tokens

T = TypeVar("T", bound=msgspec.Struct)

PositiveInt = Annotated[int, Meta(ge=1)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]


class RequestError(Exception):
    """A request body the engine rejects; ``code`` is machine-readable."""

    def __init__(self, message: str, *, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _OpenAIBase(msgspec.Struct):
    model: str | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: PositiveInt | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class ChatCompletionBody(_OpenAIBase):
    messages: list[ChatMessage] = []


class CompletionBody(_OpenAIBase):
    prompt: str | list[str | int] | None = None


class TgiParameters(msgspec.Struct):
    max_new_tokens: PositiveInt | None = None
    stop: list[str] = []
    seed: int | None = None
    temperature: Annotated[float, Meta(gt=0.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, lt=1.0)] | None = None
    details: bool = False
    do_sample: bool = False


class TgiBody(msgspec.Struct):
    inputs: str
    parameters: TgiParameters = msgspec.field(default_factory=TgiParameters)
    stream: bool = False


class SpeedBody(msgspec.Struct):
    factor: Annotated[float, Meta(gt=0.0)]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate, whatever API the request came through."""

    prompt: str
    prompt_tokens: int
    max_tokens: int | None
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool = False
    details: bool = False


def decode(body: bytes, kind: type[T]) -> T:
    """Decode JSON ``body`` as ``kind``; RequestError on bad JSON or types."""
    if not body.strip():
        raise RequestError("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise RequestError(f"invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RequestError(f"malformed JSON: {exc}", code="invalid_json") from exc


def _stop_list(stop: str | list[str] | None, *, limit: int) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > limit:
        raise RequestError(f"at most {limit} stop sequences are allowed, got {len(stops)}")
    if any(not s for s in stops):
        raise RequestError("stop sequences must not be empty strings")
    return stops


def _openai_common(body: _OpenAIBase) -> None:
    if body.n not in (None, 1):
        raise RequestError(f"the sim engine generates one choice only; n must be 1, got {body.n}")


def chat_request(raw: bytes, *, max_stop_sequences: int) -> GenerationRequest:
    """A /v1/chat/completions body as a GenerationRequest."""
    body = decode(raw, ChatCompletionBody)
    if not body.messages:
        raise RequestError("`messages` is required and must be a non-empty list")
    _openai_common(body)
    lines: list[str] = []
    tokens = 0
    for message in body.messages:
        if isinstance(message.content, list):
            content = "".join(part.text or "" for part in message.content)
        else:
            content = message.content or ""
        lines.append(f"{message.role}: {content}")
        tokens += CHAT_MESSAGE_OVERHEAD_TOKENS + count_tokens(content)
    return GenerationRequest(
        prompt="\n".join(lines),
        prompt_tokens=tokens,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=_stop_list(body.stop, limit=max_stop_sequences),
        seed=body.seed,
        stream=bool(body.stream),
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
    )


def completion_request(raw: bytes, *, max_stop_sequences: int) -> GenerationRequest:
    """A /v1/completions body as a GenerationRequest."""
    body = decode(raw, CompletionBody)
    _openai_common(body)
    prompt = body.prompt
    if prompt is None:
        raise RequestError("`prompt` is required")
    if isinstance(prompt, str):
        text, tokens = prompt, count_tokens(prompt)
    elif prompt and all(isinstance(p, int) for p in prompt):
        text, tokens = " ".join(map(str, prompt)), len(prompt)
    elif len(prompt) == 1 and isinstance(first := prompt[0], str):
        text, tokens = first, count_tokens(first)
    else:
        raise RequestError(
            "`prompt` must be a string, a list of one string, or a non-empty list of token ids"
        )
    return GenerationRequest(
        prompt=text,
        prompt_tokens=max(tokens, 1),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=_stop_list(body.stop, limit=max_stop_sequences),
        seed=body.seed,
        stream=bool(body.stream),
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
    )


def tgi_request(raw: bytes, *, max_stop_sequences: int, stream: bool) -> GenerationRequest:
    """A TGI /generate or /generate_stream body as a GenerationRequest."""
    body = decode(raw, TgiBody)
    if not body.inputs.strip():
        raise RequestError("`inputs` cannot be empty")
    params = body.parameters
    return GenerationRequest(
        prompt=body.inputs,
        prompt_tokens=max(count_tokens(body.inputs), 1),
        max_tokens=params.max_new_tokens,
        stop=_stop_list(params.stop, limit=max_stop_sequences),
        seed=params.seed,
        stream=stream,
        details=params.details,
    )
