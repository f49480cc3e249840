"""OpenAI chat-completion requests: decode, validate, map to an ``InferenceJob``.

Bodies are decoded with one reused msgspec decoder into request Structs
(unknown fields are ignored, as OpenAI-compatible servers do). Everything a
client can get wrong becomes an :class:`ApiError` with status 400 that names
the field; nothing here raises anything else for bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import msgspec
from migserve_shared.messages import ChatMessage, InferenceJob, SamplingParams

from migserve_gateway.core.decoding import decode_body
from migserve_gateway.core.errors import bad_request

Role = Literal["system", "user", "assistant", "tool", "developer"]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_TEMPERATURE: Final = 2.0


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class MessageIn(msgspec.Struct, frozen=True):
    role: Role
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, frozen=True):
    """The fields of OpenAI's chat-completion request that migserve reads."""

    model: str
    messages: list[MessageIn]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None


@dataclass(frozen=True, slots=True)
class RequestLimits:
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_stop: int = 4
    max_prompt_chars: int = 131072


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated chat request, ready to become a job."""

    model: str
    messages: list[ChatMessage]
    params: SamplingParams
    stream: bool
    include_usage: bool
    api: Literal["chat", "completion"] = "chat"
    #: the prompt of a completion (``api="completion"``)
    prompt: str = ""


_decoder = msgspec.json.Decoder(ChatCompletionRequest)


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode a request body; ApiError(400) names what is wrong."""
    return decode_body(_decoder, body)


def _text(msg: MessageIn, index: int) -> str:
    content = msg.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for k, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise bad_request(
                f"Content part type '{part.type}' is not supported; only text parts are",
                reason="unsupported_content",
                param=f"messages[{index}].content[{k}].type",
            )
        parts.append(part.text)
    return "".join(parts)


def _max_tokens(req: ChatCompletionRequest, limits: RequestLimits) -> int:
    name, value = "max_completion_tokens", req.max_completion_tokens
    if value is None:
        name, value = "max_tokens", req.max_tokens
    return check_max_tokens(name, value, limits)


def check_max_tokens(name: str, value: int | None, limits: RequestLimits) -> int:
    """``value`` within the server's bounds (the default when None); else ApiError(400)."""
    if value is None:
        return limits.default_max_tokens
    if not 1 <= value <= limits.max_tokens_limit:
        raise bad_request(
            f"{name} must be between 1 and {limits.max_tokens_limit} "
            f"(the limit of this server), got {value}",
            reason="max_tokens",
            param=name,
        )
    return value


def _stop(stop: str | list[str] | None, limits: RequestLimits) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > limits.max_stop:
        raise bad_request(
            f"stop may hold at most {limits.max_stop} sequences, got {len(stops)}",
            reason="invalid_value",
            param="stop",
        )
    return [s for s in stops if s]


class _Sampled(Protocol):
    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def stop(self) -> str | list[str] | None: ...


def _sampling(req: ChatCompletionRequest, limits: RequestLimits) -> SamplingParams:
    return sampling_params(req, _max_tokens(req, limits), limits)


def sampling_params(req: _Sampled, max_tokens: int, limits: RequestLimits) -> SamplingParams:
    """Validated sampling parameters of any request shape; ApiError(400) names the field."""
    temperature, top_p, seed = req.temperature, req.top_p, req.seed
    if temperature is not None and not (0.0 <= temperature <= MAX_TEMPERATURE):
        raise bad_request(
            f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {temperature}",
            reason="invalid_value",
            param="temperature",
        )
    if top_p is not None and not (0.0 < top_p <= 1.0 and math.isfinite(top_p)):
        raise bad_request(
            f"top_p must be greater than 0 and at most 1, got {top_p}",
            reason="invalid_value",
            param="top_p",
        )
    if seed is not None and not INT64_MIN <= seed <= INT64_MAX:
        raise bad_request(
            f"seed must fit in a signed 64-bit integer, got {seed}",
            reason="invalid_value",
            param="seed",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=_stop(req.stop, limits),
    )


def check_prompt_length(chars: int, limits: RequestLimits, *, param: str) -> None:
    """ApiError(400) naming the limit when the prompt is longer than it."""
    if chars > limits.max_prompt_chars:
        raise bad_request(
            f"the prompt is {chars} characters long; this server's limit is "
            f"{limits.max_prompt_chars} characters (MIGSERVE_MAX_PROMPT_CHARS)",
            reason="prompt_too_long",
            param=param,
        )


def validate_chat_request(req: ChatCompletionRequest, limits: RequestLimits) -> ChatCall:
    """Check what the types cannot say; map to a :class:`ChatCall`."""
    if not req.model:
        raise bad_request("model must be a non-empty string", reason="invalid_value", param="model")
    if req.n is not None and req.n != 1:
        if req.n > 1:
            raise bad_request(
                f"n={req.n} is not supported; this server returns exactly one choice (n=1)",
                reason="unsupported_param",
                param="n",
            )
        raise bad_request(f"n must be 1, got {req.n}", reason="invalid_value", param="n")
    if not req.messages:
        raise bad_request(
            "messages must hold at least one message", reason="empty_messages", param="messages"
        )
    messages = [ChatMessage(m.role, _text(m, i)) for i, m in enumerate(req.messages)]
    check_prompt_length(sum(len(m.content) for m in messages), limits, param="messages")
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    return ChatCall(
        model=req.model,
        messages=messages,
        params=_sampling(req, limits),
        stream=req.stream,
        include_usage=include_usage,
    )


def parse_chat_request(body: bytes, limits: RequestLimits) -> ChatCall:
    """Decode and validate a chat-completion body in one step."""
    return validate_chat_request(decode_chat_request(body), limits)


def build_job(
    call: ChatCall,
    *,
    job_id: str,
    reply_to: str,
    deadline: float,
    created: float,
    trace_id: str,
    traceparent: str,
    request_id: str,
) -> InferenceJob:
    """The job published for a validated chat request."""
    return InferenceJob(
        job_id=job_id,
        model=call.model,
        api=call.api,
        messages=call.messages,
        prompt=call.prompt,
        params=call.params,
        reply_to=reply_to,
        deadline=deadline,
        trace_id=trace_id,
        request_id=request_id,
        traceparent=traceparent,
        created=created,
    )
