"""What the gateway path adds: the same sim engine reached directly and through
gateway -> NATS -> bridge, in one run, at several concurrencies.

    uv run python bench/gateway_overhead.py [--requests 200] [--tokens 32]

Prints a table: TTFT p50/p99 and inter-token gap p50 for both paths and the
difference, requests per second, and the gateway's CPU seconds and peak RSS.
Every process runs on 127.0.0.1 and stops at the end. Figures are ratios and
differences measured in the same run, because these machines are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from migserve_cli.nats_server import start_nats_server
from migserve_shared import subjects
from migserve_shared.bus import connect, ensure_jetstream, open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.messages import InstanceRecord, ModelSpec, encode, now

MODEL = "bench/sim-model"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0


async def one(client: httpx.AsyncClient, url: str, tokens: int, run: Run) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "benchmark prompt"}],
        "max_tokens": tokens,
        "stream": True,
    }
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                run.failed += 1
                await resp.aread()
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if not chunk.get("choices") or not chunk["choices"][0]["delta"].get("content"):
                    continue
                t = time.perf_counter()
                if last is None:
                    run.ttft.append(t - start)
                else:
                    run.gaps.append(t - last)
                last = t
    except httpx.HTTPError:
        run.failed += 1


async def load(url: str, concurrency: int, requests: int, tokens: int) -> Run:
    run = Run()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await one(client, url, tokens, run)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - start
    return run


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def register(nats_url: str, engine_url: str, slots: int) -> None:
    nc = await connect(NatsSettings(url=nats_url, name="bench"))
    try:
        js = nc.jetstream()
        await ensure_jetstream(js)
        b = await open_buckets(js)
        spec = ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=100)
        await b.models.put(subjects.model_key(MODEL), encode(spec))
        rec = InstanceRecord(
            instance_id="bench-1",
            model_id=MODEL,
            node="bench",
            gpu_index=0,
            profile="7g.40gb",
            start=0,
            state="ready",
            slots=slots,
            engine_url=engine_url,
            created=now(),
            updated=now(),
        )
        await b.instances.put(subjects.instance_key("bench-1"), encode(rec))
    finally:
        await nc.close()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--tpot-ms", type=float, default=5.0, help="the sim engine's TPOT")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    slots = max(levels)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="migserve-bench-") as tmp:
        work = Path(tmp)
        nats = start_nats_server(work / "nats")
        try:
            env = {**os.environ, "MIGSERVE_NATS_URL": nats.url, "MIGSERVE_LOG_LEVEL": "WARNING"}
            eport, gport = free_port(), free_port()
            engine_url = f"http://127.0.0.1:{eport}"
            procs.append(
                start(
                    [
                        PY,
                        "-m",
                        "migserve_agent.sim_engine",
                        "--port",
                        str(eport),
                        "--model",
                        MODEL,
                        "--profile",
                        "7g.40gb",
                        "--slots",
                        str(slots),
                        "--alpha-ms",
                        str(args.tpot_ms),
                        "--beta-ms",
                        "0",
                        "--prefill-ms-per-token",
                        "0",
                    ],
                    env,
                    work / "engine.log",
                )
            )
            wait_http(f"{engine_url}/health")
            asyncio.run(register(nats.url, engine_url, slots))
            procs.append(
                start(
                    [
                        PY,
                        "-m",
                        "migserve_agent.bridge",
                        "--model",
                        MODEL,
                        "--instance-id",
                        "bench-1",
                        "--node",
                        "bench",
                        "--engine-url",
                        engine_url,
                        "--engine-kind",
                        "sim",
                        "--slots",
                        str(slots),
                        "--metrics-port",
                        "0",
                    ],
                    env,
                    work / "bridge.log",
                )
            )
            genv = {
                **env,
                "MIGSERVE_GATEWAY_PORT": str(gport),
                "MIGSERVE_AUTH_DISABLED": "true",
                "MIGSERVE_MAX_CONCURRENT_PER_KEY": "4096",
                "MIGSERVE_MAX_IN_FLIGHT": "4096",
            }
            gateway = start([PY, "-m", "migserve_gateway"], genv, work / "gateway.log")
            procs.append(gateway)
            gw_url = f"http://127.0.0.1:{gport}"
            wait_http(f"{gw_url}/health")
            # warm up both paths (connections, the bridge's pulls)
            asyncio.run(load(f"{engine_url}/v1/chat/completions", 4, 20, args.tokens))
            asyncio.run(load(f"{gw_url}/v1/chat/completions", 4, 20, args.tokens))
            rows = []
            cpu0 = cpu_seconds(gateway.pid)
            for c in levels:
                n = max(args.requests, c * 2)
                direct = asyncio.run(load(f"{engine_url}/v1/chat/completions", c, n, args.tokens))
                through = asyncio.run(load(f"{gw_url}/v1/chat/completions", c, n, args.tokens))
                rows.append((c, n, direct, through))
            cpu = cpu_seconds(gateway.pid) - cpu0
            rss = peak_rss_mb(gateway.pid)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            nats.stop()
    hdr = (
        f"{'conc':>5} {'reqs':>5} | {'TTFT p50 direct/gw/+':>24} | {'TTFT p99 direct/gw/+':>24}"
        f" | {'gap p50 direct/gw/+':>22} | {'req/s direct/gw':>16} | failed"
    )
    print(f"sim engine TPOT {args.tpot_ms} ms, {args.tokens} tokens per request, times in ms")
    print(hdr)
    print("-" * len(hdr))
    for c, n, d, g in rows:
        t50d, t50g = pct(d.ttft, 50), pct(g.ttft, 50)
        t99d, t99g = pct(d.ttft, 99), pct(g.ttft, 99)
        g50d, g50g = pct(d.gaps, 50), pct(g.gaps, 50)
        print(
            f"{c:>5} {n:>5} | {t50d:7.2f} {t50g:7.2f} {t50g - t50d:+7.2f} |"
            f" {t99d:7.2f} {t99g:7.2f} {t99g - t99d:+7.2f} |"
            f" {g50d:6.2f} {g50g:6.2f} {g50g - g50d:+6.2f} |"
            f" {n / d.seconds:7.1f} {n / g.seconds:7.1f} | {d.failed}/{g.failed}"
        )
    print(f"gateway: {cpu:.1f} CPU seconds over the runs, peak RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
