"""OpenAI completions and the TGI API over real HTTP and NATS, with unchanged official clients.

The gateway runs in process on port 0 against a real nats-server; a fake
bridge takes the jobs from the model's shared consumer (``test_gateway_nats``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest
from migserve_cli.nats_server import NatsServer
from nats.aio.client import Client as NATS
from test_gateway_nats import MODEL, bridge_running, instance_ready, register, running_gateway
from text_generation import AsyncClient
from text_generation.errors import ValidationError


async def test_openai_client_completions(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    await instance_ready(nc)
    async with running_gateway(nats_server) as url, bridge_running(nc) as bridge:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        try:
            done = await client.completions.create(
                model=MODEL, prompt="Once upon", max_tokens=5, stop=["."], seed=7
            )
            assert done.object == "text_completion"
            assert done.choices[0].text == "Hello, world"
            assert done.usage is not None and done.usage.completion_tokens == 3
            job = bridge.jobs[-1]
            assert (job.api, job.prompt, job.messages) == ("completion", "Once upon", [])
            assert (job.params.max_tokens, job.params.stop, job.params.seed) == (5, ["."], 7)

            stream = await client.completions.create(
                model=MODEL,
                prompt=["Once upon"],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=5,
            )
            texts, finish, used = [], None, None
            async for chunk in stream:
                if chunk.choices:
                    texts.append(chunk.choices[0].text)
                    finish = chunk.choices[0].finish_reason or finish
                used = chunk.usage or used
            assert "".join(texts) == "Hello, world"
            assert finish == "stop" and used is not None and used.total_tokens == 10

            with pytest.raises(openai.BadRequestError, match="n=2"):
                await client.completions.create(model=MODEL, prompt="x", n=2)
            with pytest.raises(openai.BadRequestError, match="exactly one"):
                await client.completions.create(model=MODEL, prompt=["a", "b"])
        finally:
            await client.close()


# the client calls pydantic's deprecated .dict() on every request: its warning, not ours
@pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")
async def test_text_generation_client(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    await instance_ready(nc)
    async with running_gateway(nats_server) as url, bridge_running(nc) as bridge:
        client = AsyncClient(url, timeout=10)
        done = await client.generate("Once upon", max_new_tokens=5, seed=3)
        assert done.generated_text == "Hello, world"
        assert done.details.generated_tokens == 3
        assert [t.text for t in done.details.tokens] == ["Hello", ",", " world"]
        assert done.details.finish_reason.value == "eos_token"
        job = bridge.jobs[-1]
        assert (job.api, job.prompt, job.params.max_tokens) == ("completion", "Once upon", 5)

        events = [r async for r in client.generate_stream("Once upon", max_new_tokens=5)]
        assert "".join(r.token.text for r in events if not r.token.special) == "Hello, world"
        assert [r.generated_text for r in events] == [None, None, None, "Hello, world"]
        last = events[-1].details
        assert last is not None and last.generated_tokens == 3

        with pytest.raises(ValidationError, match="max_new_tokens"):
            await client.generate("Once upon", max_new_tokens=100_000)

        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            info = (await http.get("/info")).json()
            assert info["model_id"] == MODEL and info["max_new_tokens"] == 4096
            plain = await http.post("/generate", json={"inputs": "Hi"})
            assert plain.json() == {"generated_text": "Hello, world", "details": None}
            raw = await http.post("/generate_stream", json={"inputs": "Hi"})
            assert raw.headers["content-type"].startswith("text/event-stream")
            lines = [e for e in raw.text.split("\n\n") if e]
            assert all(e.startswith("data:{") for e in lines) and "[DONE]" not in raw.text
            first = json.loads(lines[0][5:])
            assert first == {
                "token": {"id": 0, "text": "Hello", "logprob": None, "special": False},
                "generated_text": None,
                "details": None,
            }
            bad = await http.post("/generate", json={"inputs": ""})
            assert bad.status_code == 400
            assert bad.json() == {"error": "`inputs` cannot be empty", "error_type": "validation"}


async def test_tgi_needs_one_model(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    await register(nc, "org/other")
    async with running_gateway(nats_server) as url, httpx.AsyncClient(base_url=url) as http:
        for _ in range(50):
            r = await http.get("/info")
            if r.status_code == 400:
                break
        assert r.status_code == 400 and "MIGSERVE_TGI_MODEL" in r.json()["error"]


def test_cli_refuses_to_start_without_keys_unless_auth_is_off() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGSERVE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "migserve_gateway"],
        capture_output=True,
        text=True,
        env={**env, "MIGSERVE_NATS_URL": "nats://127.0.0.1:1", "MIGSERVE_GATEWAY_PORT": "0"},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "MIGSERVE_API_KEYS_FILE is not set" in proc.stderr
    assert "MIGSERVE_AUTH_DISABLED=true" in proc.stderr
