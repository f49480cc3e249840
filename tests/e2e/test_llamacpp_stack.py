"""End to end: `migserve up` with the default model file serves the real SmolLM2.

The default model file names the llamacpp engine, so the answer to "What is a
GPU?" comes from llama.cpp's llama-server running SmolLM2-135M-Instruct on the
CPU, on a simulated MIG slice, through the gateway, NATS and the bridge.
Needs the cached llama-server (scripts/test.sh builds it first).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from migserve_agent.engines.llama_binary import llama_server_path, usable
from migserve_cli import stack as local_stack
from migserve_cli.model_file import DEFAULT_MODEL_FILE, load_models
from migserve_cli.procs import ProcessRef
from migserve_cli.status import read_cluster

from e2e.stack_support import chat, stream_pieces, up_then_down

pytestmark = pytest.mark.e2e

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: an English answer about GPUs has at least one of these words
WORDS = re.compile(r"\b(graphics|processing|unit|computer|the|is|a)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackFile]:
    binary = llama_server_path(os.environ)
    if not usable(binary):
        pytest.fail(f"no llama-server at {binary}: run scripts/build-llama-server.sh first")
    models = load_models(DEFAULT_MODEL_FILE)
    assert [(m.model_id, m.engine) for m in models] == [(MODEL, "llamacpp")]
    home = tmp_path_factory.mktemp("stack")
    opts = local_stack.StackOptions(home=home, models=models, nodes=1, gateway_port=0)
    yield from up_then_down(opts)


def _chat(stream: bool) -> dict[str, object]:
    return chat(MODEL, stream=stream, max_tokens=48, temperature=0)


def test_real_model_answers_streaming_and_not(stack: local_stack.StackFile) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=120) as http:
        pieces = stream_pieces(http, _chat(True))
        streamed = "".join(pieces)
        assert len(pieces) > 1 and WORDS.search(streamed), streamed

        resp = http.post("/v1/chat/completions", json=_chat(False))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        text = body["choices"][0]["message"]["content"]
        assert WORDS.search(text), text
        assert body["usage"]["completion_tokens"] > 0
        assert body["model"] == MODEL


def test_the_instance_is_llama_server(stack: local_stack.StackFile) -> None:
    view = asyncio.run(read_cluster(stack.nats_url, stack.gateway_url))
    ready = [i for i in view.instances if i.model_id == MODEL and i.state == "ready"]
    assert len(ready) == 1
    inst = ready[0]
    assert inst.engine == "llamacpp"
    assert inst.slots == 2  # 2 per compute slice on the 1g slice
    assert inst.engine_pid is not None
    cmdline = Path(f"/proc/{inst.engine_pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"llama-server")
    assert b"SmolLM2-135M-Instruct.Q4_1.gguf" in cmdline[cmdline.index(b"-m") + 1]


def test_down_leaves_nothing(stack: local_stack.StackFile) -> None:
    view = asyncio.run(read_cluster(stack.nats_url))
    children = [pid for i in view.instances for pid in (i.engine_pid, i.bridge_pid) if pid]
    assert children
    lines: list[str] = []
    report = local_stack.down(Path(stack.home), lines.append)
    assert report.leftover_slices == 0, lines
    assert report.leftover_processes == [], lines
    assert not any(ProcessRef.of("x", pid).alive() for pid in children)
    assert not any(p.ref().alive() for p in stack.processes)
    assert local_stack.read_stack(Path(stack.home)) is None
