"""Prompt-completion requests: OpenAI ``/v1/completions`` and TGI ``/generate``.

Both become a :class:`ChatCall` with ``api="completion"`` and a prompt; the
bridge sends it to the engine's ``/v1/completions``. Validation shares the
chat request's rules (max_tokens bounds, sampling ranges, prompt length).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from migserve_gateway.core.chat import (
    ChatCall,
    RequestLimits,
    StreamOptions,
    check_max_tokens,
    check_prompt_length,
    sampling_params,
)
from migserve_gateway.core.decoding import decode_body
from migserve_gateway.core.errors import bad_request


class CompletionRequest(msgspec.Struct, frozen=True):
    """The fields of OpenAI's (legacy) completion request that migserve reads."""

    model: str
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    best_of: int | None = None
    echo: bool = False
    suffix: str | None = None


class TgiParameters(msgspec.Struct, frozen=True):
    """TGI's ``parameters`` that migserve reads (others are accepted and ignored)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    do_sample: bool = False
    best_of: int | None = None
    details: bool = False
    return_full_text: bool = False


class TgiRequest(msgspec.Struct, frozen=True):
    inputs: str
    parameters: TgiParameters | None = None
    stream: bool = False


_completion = msgspec.json.Decoder(CompletionRequest)
_tgi = msgspec.json.Decoder(TgiRequest)


def _one(name: str, value: int | None) -> None:
    if value is not None and value != 1:
        raise bad_request(
            f"{name}={value} is not supported; this server returns exactly one choice ({name}=1)",
            reason="unsupported_param",
            param=name,
        )


def _prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise bad_request(
            f"prompt must be a string or a list of exactly one string, got {len(prompt)}",
            reason="unsupported_param",
            param="prompt",
        )
    return prompt[0]


def parse_completion_request(body: bytes, limits: RequestLimits) -> ChatCall:
    """Decode and validate an OpenAI completion body; ApiError(400) names the field."""
    req = decode_body(_completion, body)
    if not req.model:
        raise bad_request("model must be a non-empty string", reason="invalid_value", param="model")
    _one("n", req.n)
    _one("best_of", req.best_of)
    for name, unsupported in (("echo", req.echo), ("suffix", req.suffix)):
        if unsupported:
            raise bad_request(
                f"{name} is not supported by this server", reason="unsupported_param", param=name
            )
    prompt = _prompt(req.prompt)
    if not prompt:
        raise bad_request("prompt must not be empty", reason="empty_prompt", param="prompt")
    check_prompt_length(len(prompt), limits, param="prompt")
    return ChatCall(
        model=req.model,
        messages=[],
        params=sampling_params(req, check_max_tokens("max_tokens", req.max_tokens, limits), limits),
        stream=req.stream,
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
        api="completion",
        prompt=prompt,
    )


@dataclass(frozen=True, slots=True)
class TgiCall:
    call: ChatCall
    stream: bool
    details: bool


def parse_tgi_request(body: bytes, model: str, limits: RequestLimits) -> TgiCall:
    """A TGI generate body as a call for ``model``; ApiError(400) names the field."""
    req = decode_body(_tgi, body)
    params = req.parameters or TgiParameters()
    if not req.inputs:
        raise bad_request("`inputs` cannot be empty", reason="empty_prompt", param="inputs")
    _one("best_of", params.best_of)
    check_prompt_length(len(req.inputs), limits, param="inputs")
    max_new = check_max_tokens("max_new_tokens", params.max_new_tokens, limits)
    call = ChatCall(
        model=model,
        messages=[],
        params=sampling_params(params, max_new, limits),
        stream=req.stream,
        include_usage=False,
        api="completion",
        prompt=req.inputs,
    )
    return TgiCall(call, req.stream, params.details)
