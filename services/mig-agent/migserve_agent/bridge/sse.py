"""Parse an OpenAI-style Server-Sent-Events stream into token events (pure, no I/O).

vLLM, TGI, llama.cpp's llama-server and the sim engine all stream
``/v1/chat/completions`` and ``/v1/completions`` the same way: one
``data: {json}`` line per chunk, a blank line between events, and
``data: [DONE]`` at the end. This is the hot path (one chunk per token for
every stream the bridge carries), so the parser works on bytes, splits lines
itself, decodes each chunk with one reused typed msgspec decoder, and
represents a token as the plain ``str`` of its text (no wrapper object).

Tolerated: ``data:`` with or without the space, ``\\r\\n`` line ends, comment
lines (``: ping``), other SSE fields (``event:``, ``id:``, ``retry:``), chunks
split anywhere across reads. A data line that is not a valid chunk is skipped
and counted in ``malformed`` (the caller decides what to log). Each data line
is treated as one complete JSON document: OpenAI-style engines never split one
across several ``data:`` lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from migserve_agent.bridge.errors import SseProtocolError

#: a line longer than this (without a newline) is not a sane SSE stream
MAX_LINE_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Finish:
    """The engine said why it stopped (the raw OpenAI ``finish_reason``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts the engine reported (``stream_options.include_usage``)."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class EngineReportedError:
    """An error object the engine sent inside the stream instead of a chunk."""

    message: str


class Done:
    """``data: [DONE]``: the stream is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DONE"


DONE: Final = Done()

#: a token's text is a plain ``str``; everything else is one of the small classes
StreamEvent = str | Finish | Usage | EngineReportedError | Done


# The parts of an OpenAI chunk the bridge reads; unknown fields are ignored.
class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: _ErrorBody | str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class OpenAISseParser:
    """Incremental parser for one stream: feed it bytes as they arrive."""

    __slots__ = ("_buf", "done", "finished", "malformed")

    def __init__(self) -> None:
        self._buf = b""
        #: lines that were not valid chunks (skipped)
        self.malformed = 0
        #: ``[DONE]`` was seen
        self.done = False
        #: a ``finish_reason`` was seen
        self.finished = False

    @property
    def complete(self) -> bool:
        """The engine ended the stream properly (``[DONE]`` or a finish reason)."""
        return self.done or self.finished

    def feed(self, data: bytes) -> list[StreamEvent]:
        """The events completed by ``data`` (a partial last line waits for more)."""
        buf = self._buf + data if self._buf else data
        if b"\n" not in buf:
            if len(buf) > MAX_LINE_BYTES:
                raise SseProtocolError(f"SSE line longer than {MAX_LINE_BYTES} bytes")
            self._buf = buf
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > MAX_LINE_BYTES:
            raise SseProtocolError(f"SSE line longer than {MAX_LINE_BYTES} bytes")
        out: list[StreamEvent] = []
        for line in lines:
            self._line(line, out)
        return out

    def close(self) -> list[StreamEvent]:
        """The events of a last line the stream did not end with a newline."""
        rest, self._buf = self._buf, b""
        out: list[StreamEvent] = []
        if rest:
            self._line(rest, out)
        return out

    def _line(self, line: bytes, out: list[StreamEvent]) -> None:
        if not line.startswith(b"data:"):
            return  # blank separator, comment, or another SSE field
        payload = line[5:].strip()
        if not payload:
            return
        if payload == b"[DONE]":
            self.done = True
            out.append(DONE)
            return
        try:
            chunk = _decode_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.malformed += 1
            return
        if chunk.error is not None:
            err = chunk.error
            out.append(EngineReportedError(err if isinstance(err, str) else err.message))
            return
        if chunk.choices:
            choice = chunk.choices[0]
            delta = choice.delta
            text = delta.content if delta is not None else choice.text
            if text:
                out.append(text)
            if choice.finish_reason:
                self.finished = True
                out.append(Finish(choice.finish_reason))
        if chunk.usage is not None:
            usage = chunk.usage
            out.append(Usage(max(usage.prompt_tokens, 0), max(usage.completion_tokens, 0)))
