"""The bridge's SSE parser: OpenAI chunks from every engine kind, split reads, bad lines."""

from __future__ import annotations

import pytest
from migserve_agent.bridge.errors import SseProtocolError
from migserve_agent.bridge.sse import (
    DONE,
    MAX_LINE_BYTES,
    EngineReportedError,
    Finish,
    OpenAISseParser,
    StreamEvent,
    Usage,
)

CHAT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
TEXT = b'data: {"id":"t","object":"text_completion","choices":[{"index":0,'


def chat(content: str, finish: str | None = None) -> bytes:
    fin = b"null" if finish is None else b'"' + finish.encode() + b'"'
    body = b'"delta":{"content":"' + content.encode() + b'"},"finish_reason":' + fin
    return CHAT + body + b"}]}\n\n"


@pytest.mark.parametrize(
    ("stream", "events", "malformed"),
    [
        pytest.param(chat("Hello"), ["Hello"], 0, id="chat token"),
        pytest.param(
            CHAT + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
            [],
            0,
            id="role chunk has no token",
        ),
        pytest.param(
            CHAT + b'"delta":{"role":"assistant"},"finish_reason":null}]}\n\n',
            [],
            0,
            id="no content",
        ),
        pytest.param(
            CHAT + b'"delta":{"content":null,"tool_calls":[]},"finish_reason":null}]}\n\n',
            [],
            0,
            id="null content",
        ),
        pytest.param(
            TEXT + b'"text":" world","finish_reason":null}]}\n\n', [" world"], 0, id="text"
        ),
        pytest.param(chat("!", "stop"), ["!", Finish("stop")], 0, id="token with finish"),
        pytest.param(
            CHAT + b'"delta":{},"finish_reason":"length"}]}\n\n', [Finish("length")], 0, id="finish"
        ),
        pytest.param(
            b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
            b'"total_tokens":10}}\n\n',
            [Usage(7, 3)],
            0,
            id="usage chunk",
        ),
        pytest.param(
            b'data: {"choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":2}}\n\n',
            [Usage(0, 2)],
            0,
            id="negative usage clamped",
        ),
        pytest.param(b"data: [DONE]\n\n", [DONE], 0, id="done"),
        pytest.param(b"data:[DONE]\r\n\r\n", [DONE], 0, id="done without space, crlf"),
        pytest.param(
            b'data:{"choices":[{"delta":{"content":"x"}}]}\n\n', ["x"], 0, id="data without space"
        ),
        pytest.param(b": ping\n\nevent: message\nid: 4\nretry: 10\n\n", [], 0, id="other fields"),
        pytest.param(b"\n\n\n", [], 0, id="blank lines"),
        pytest.param(b"data: \n\n", [], 0, id="empty data"),
        pytest.param(b"data: {not json}\n\n" + chat("ok"), ["ok"], 1, id="bad json skipped"),
        pytest.param(b'data: {"choices": 5}\n\n', [], 1, id="wrong type skipped"),
        pytest.param(b"data: [1, 2]\n\n", [], 1, id="not an object"),
        pytest.param(b'data: "hello"\n\n', [], 1, id="a bare string"),
        pytest.param(
            b'data: {"error":{"message":"context too long","code":400}}\n\n',
            [EngineReportedError("context too long")],
            0,
            id="error object",
        ),
        pytest.param(
            b'data: {"error":"overloaded"}\n\n', [EngineReportedError("overloaded")], 0, id="error"
        ),
        pytest.param(
            chat("caf\\u00e9") + chat('say \\"hi\\"'), ["caf\u00e9", 'say "hi"'], 0, id="escapes"
        ),
        pytest.param(
            CHAT + b'"delta":{"content":"a"},"finish_reason":null},{"index":1,"delta":'
            b'{"content":"b"}}]}\n\n',
            ["a"],
            0,
            id="only the first choice",
        ),
    ],
)
def test_parse_whole_stream(stream: bytes, events: list[StreamEvent], malformed: int) -> None:
    parser = OpenAISseParser()
    got = parser.feed(stream) + parser.close()
    assert got == events
    assert parser.malformed == malformed


FULL = (
    CHAT + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    + chat("Hel")
    + chat("lo")
    + chat(" w\\u00f6rld")
    + CHAT + b'"delta":{},"finish_reason":"length"}]}\n\n'
    + b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n'
    + b"data: [DONE]\n\n"
)  # fmt: skip
FULL_EVENTS: list[StreamEvent] = ["Hel", "lo", " w\u00f6rld", Finish("length"), Usage(5, 3), DONE]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(FULL)])
def test_chunks_split_anywhere_give_the_same_events(size: int) -> None:
    parser = OpenAISseParser()
    got: list[StreamEvent] = []
    for start in range(0, len(FULL), size):
        got += parser.feed(FULL[start : start + size])
    got += parser.close()
    assert got == FULL_EVENTS
    assert parser.complete
    assert parser.done
    assert parser.finished


def test_last_line_without_newline_is_parsed_on_close() -> None:
    parser = OpenAISseParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.close() == [DONE]


def test_stream_without_end_is_not_complete() -> None:
    parser = OpenAISseParser()
    parser.feed(chat("a") + chat("b"))
    assert not parser.complete


def test_finish_without_done_is_complete() -> None:
    parser = OpenAISseParser()
    parser.feed(chat("a", "stop"))
    assert parser.complete
    assert not parser.done


@pytest.mark.parametrize(
    "reads",
    [
        [b"data: " + b"x" * 1000, b"x" * MAX_LINE_BYTES],
        [b"data: [DONE]\n" + b"y" * (MAX_LINE_BYTES + 1)],
    ],
)
def test_a_line_longer_than_the_limit_is_a_protocol_error(reads: list[bytes]) -> None:
    parser = OpenAISseParser()
    with pytest.raises(SseProtocolError):
        for data in reads:
            parser.feed(data)
