"""End to end: the local stack cold-starts a model on a simulated MIG slice and answers.

Runs `migserve up` (as the user would, through the CLI module), sends a
streaming and a non-streaming chat completion for a model nothing serves yet,
checks the story in the event stream, then `migserve down` and checks that no
process and no slice is left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from migserve_cli import stack as local_stack
from migserve_cli.procs import ProcessRef
from migserve_cli.status import read_cluster
from migserve_cli.trace import follow
from migserve_shared.messages import ModelSpec

from e2e.stack_support import chat, stream_pieces, up_then_down

pytestmark = pytest.mark.e2e

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackFile]:
    home = tmp_path_factory.mktemp("stack")
    opts = local_stack.StackOptions(
        home=home,
        engine="sim",
        models=[ModelSpec(model_id=MODEL, engine="sim", memory_mb=1024, tpot_slo_ms=60)],
        nodes=2,
        gateway_port=0,
        sim_engine_startup_s=0.3,
        nats_auth=True,  # as `migserve up` runs it: every service under its own NATS user
    )
    yield from up_then_down(opts)


def _chat(stream: bool) -> dict[str, object]:
    return chat(MODEL, stream=stream, max_tokens=12)


def test_cold_start_then_answers_streaming_and_not(stack: local_stack.StackFile) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as http:
        chunks = stream_pieces(http, _chat(True))
        assert "".join(chunks).strip()

        resp = http.post("/v1/chat/completions", json=_chat(False))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert body["usage"]["completion_tokens"] >= 1

        models = http.get("/v1/models").json()
        assert MODEL in [m["id"] for m in models["data"]]


def test_story_is_in_the_event_stream(stack: local_stack.StackFile) -> None:
    lines: list[str] = []
    asyncio.run(follow(local_stack.nats_settings(stack), lines.append, follow_s=1.0))
    text = "\n".join(lines)
    for kind in (
        "model.registered",
        "demand",
        "scale.decided",
        "slice.created",
        "instance.starting",
        "instance.ready",
        "command.done",
    ):
        assert f" {kind} " in text, text
    decided = next(line for line in lines if " scale.decided " in line)
    trace = decided.split("trace=")[1].split()[0]
    story = [line for line in lines if f"trace={trace}" in line]
    kinds = [line.split()[1] for line in story]
    assert (
        kinds.index("scale.decided") < kinds.index("slice.created") < kinds.index("instance.ready")
    ), story


def test_status_shows_the_slice_and_instance(stack: local_stack.StackFile) -> None:
    view = asyncio.run(read_cluster(local_stack.nats_settings(stack), stack.gateway_url))
    ready = [i for i in view.instances if i.model_id == MODEL and i.state == "ready"]
    assert len(ready) == 1
    inst = ready[0]
    node = next(n for n in view.nodes if n.node == inst.node)
    slices = [s for g in node.gpus for s in g.slices]
    assert [(s.profile, s.instance_id) for s in slices] == [(inst.profile, inst.instance_id)]
    assert inst.profile == "1g.5gb"  # the smallest profile whose memory holds 1 GiB
    for pid in (inst.engine_pid, inst.bridge_pid):
        assert pid is not None and ProcessRef.of("x", pid).alive()


def test_cli_status_json_has_urls(stack: local_stack.StackFile, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "migserve_cli", "--home", stack.home, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["gateway_url"] == stack.gateway_url
    assert data["nats_url"] == stack.nats_url
    text = subprocess.run(
        [sys.executable, "-m", "migserve_cli", "--home", stack.home, "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "1g.5gb" in text and "[" in text


def test_every_service_keeps_to_its_nats_permissions(stack: local_stack.StackFile) -> None:
    """NATS auth is on, and no service was refused anything it needed on the way."""
    assert stack.nats_user == "admin"
    log = Path(stack.home) / "logs" / "nats-server.log"
    violations = [line for line in log.read_text().splitlines() if "Violation" in line]
    assert not violations, "\n".join(violations)
    passwords = [
        p.read_text().strip() for p in Path(stack.nats_password_file).parent.glob("*.password")
    ]
    assert len(passwords) >= 6  # gateway, scaler, watcher, bridge, admin, an agent per node
    logs = list(Path(stack.home).rglob("*.log"))
    assert any("bridge" in p.name for p in logs), logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert not any(pw in text for pw in passwords), path


def test_down_leaves_no_process_and_no_slice(stack: local_stack.StackFile) -> None:
    view = asyncio.run(read_cluster(local_stack.nats_settings(stack)))
    children = [pid for i in view.instances for pid in (i.engine_pid, i.bridge_pid) if pid]
    assert children
    lines: list[str] = []
    report = local_stack.down(Path(stack.home), lines.append)
    assert report.retired == len(view.instances)
    assert report.leftover_slices == 0, lines
    assert report.leftover_processes == [], lines
    assert not any(ProcessRef.of("x", pid).alive() for pid in children)
    assert not any(p.ref().alive() for p in stack.processes)
    assert local_stack.read_stack(Path(stack.home)) is None
