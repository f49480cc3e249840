"""What the local-stack end-to-end tests share: a stack fixture's start and teardown,
and a streaming chat completion through the gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
from migserve_cli import stack as local_stack


def up_then_down(opts: local_stack.StackOptions) -> Iterator[local_stack.StackFile]:
    """The body of a module-scoped stack fixture: ``up``; on teardown ``down`` leaves no process."""
    lines: list[str] = []
    try:
        yield local_stack.up(opts, lines.append)
    finally:
        report = local_stack.down(opts.home, lines.append)
        assert report.leftover_processes == [], lines


def chat(model: str, *, stream: bool, max_tokens: int, **extra: object) -> dict[str, object]:
    """A chat completion request body asking ``model`` "What is a GPU?"."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "What is a GPU?"}],
        "max_tokens": max_tokens,
        **extra,
        "stream": stream,
    }


def stream_pieces(http: httpx.Client, body: dict[str, object]) -> list[str]:
    """POST a streaming chat completion; the content pieces of its ``data:`` events."""
    pieces: list[str] = []
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    pieces.append(choices[0]["delta"]["content"])
    return pieces
