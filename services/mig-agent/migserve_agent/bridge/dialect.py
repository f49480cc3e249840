"""What differs between engine kinds, behind one small protocol (pure, no I/O).

An ``EngineDialect`` says which route serves a job, what request body to send,
how to parse the streamed answer and where the health check lives. vLLM, TGI,
llama.cpp's llama-server and the sim engine all speak OpenAI chat/completions
SSE, so one implementation (``OpenAIDialect``) serves all four today; the few
differences are settings of it (TGI refuses ``top_p`` >= 1). A dialect for
TGI's native ``/generate_stream`` would be a second implementation of the
same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import msgspec
from migserve_shared.messages import EngineKind, InferenceJob

from migserve_agent.bridge.sse import OpenAISseParser, StreamEvent

Api = Literal["chat", "completion"]

ENGINE_KINDS: Final[tuple[EngineKind, ...]] = ("sim", "llamacpp", "tgi", "vllm")

_encode = msgspec.json.Encoder().encode


class StreamParser(Protocol):
    """Turns the bytes of one streamed answer into ``StreamEvent``s."""

    @property
    def malformed(self) -> int:
        """Lines skipped because they were not valid chunks."""
        ...

    @property
    def complete(self) -> bool:
        """The engine ended the stream properly."""
        ...

    def feed(self, data: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]: ...


class EngineDialect(Protocol):
    """How the bridge talks to one kind of engine."""

    @property
    def kind(self) -> EngineKind: ...

    @property
    def health_path(self) -> str:
        """GET path that answers 200 once the engine serves (503 while loading)."""
        ...

    def route(self, api: Api) -> str:
        """The POST path that streams a job of this API."""
        ...

    def request_body(self, job: InferenceJob) -> bytes:
        """The JSON body of the streaming request for ``job``."""
        ...

    def new_parser(self) -> StreamParser:
        """A fresh parser for one streamed answer."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAIDialect:
    """OpenAI ``/v1/chat/completions`` and ``/v1/completions`` with SSE streaming."""

    kind: EngineKind
    health_path: str = "/health"
    chat_path: str = "/v1/chat/completions"
    completion_path: str = "/v1/completions"
    #: ask for a final usage chunk (``stream_options.include_usage``)
    stream_usage: bool = True
    #: the engine rejects top_p >= 1 (TGI); 1 means "no nucleus filter", so drop it
    top_p_below_one: bool = False

    def route(self, api: Api) -> str:
        return self.chat_path if api == "chat" else self.completion_path

    def request_body(self, job: InferenceJob) -> bytes:
        params = job.params
        body: dict[str, Any] = {"model": job.model}
        if job.api == "chat":
            body["messages"] = job.messages
        else:
            body["prompt"] = job.prompt
        body["stream"] = True
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        body["max_tokens"] = params.max_tokens
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None and not (self.top_p_below_one and params.top_p >= 1.0):
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = params.stop
        return _encode(body)

    def new_parser(self) -> StreamParser:
        return OpenAISseParser()


def dialect_for(kind: str) -> EngineDialect:
    """The dialect of an engine kind; ValueError names an unknown kind."""
    if kind == "tgi":
        return OpenAIDialect(kind="tgi", top_p_below_one=True)
    if kind == "sim":
        return OpenAIDialect(kind="sim")
    if kind == "llamacpp":
        return OpenAIDialect(kind="llamacpp")
    if kind == "vllm":
        return OpenAIDialect(kind="vllm")
    raise ValueError(f"unknown engine kind {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")


def normalize_finish_reason(reason: str | None) -> Literal["stop", "length"]:
    """Map an engine's finish reason to the two the job protocol knows."""
    return "length" if reason == "length" else "stop"
