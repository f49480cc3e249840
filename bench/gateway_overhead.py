"""What the gateway path adds: the same sim engine reached directly and through
gateway -> NATS -> bridge, in one run, at several concurrencies.

    uv run python bench/gateway_overhead.py [--requests 200] [--tokens 32]

The workers of a level start spread over one request's length (all requests
are equally long, so they stay spread, as independent users would be);
``--lockstep`` starts them at once, so every wave of requests arrives in one
burst and TTFT measures how fast a burst is absorbed.

Prints two tables. The first: TTFT p50/p99 and inter-token gap p50 for both
paths with the difference and the ratio gateway/direct, requests per second
and their ratio, and how busy the machine was (CPU seconds of every process
of the run, including this client, per wall second: 2.0 means both cores of
a 2-core machine were busy, so latency then measures queueing for a core).
The second: CPU milliseconds per request of each process on the gateway
path, against the direct path's client and engine. Then the gateway's CPU
seconds and peak RSS. Every process runs on 127.0.0.1 and stops at the end.
Figures are ratios and differences measured in the same run, because these
machines are shared.
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
from urllib.parse import urlsplit

import httpx
from migserve_agent.bridge.__main__ import fast_loop_factory
from migserve_agent.bridge.http1 import Http1Pool, HttpError
from migserve_cli.nats_server import start_nats_server
from migserve_shared import subjects
from migserve_shared.bus import connect, ensure_jetstream, open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.messages import InstanceRecord, ModelSpec, encode, now

MODEL = "bench/sim-model"
CHAT = "/v1/chat/completions"
PY = sys.executable


def code_path(checkout: Path) -> str:
    """A PYTHONPATH that makes the services import from ``checkout``."""
    dirs = ["shared", "services/gateway", "services/mig-agent", "cli"]
    return os.pathsep.join(str((checkout / d).resolve()) for d in dirs)


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
    #: CPU seconds over the run: process name -> seconds ("client" is this process)
    cpu: dict[str, float] = field(default_factory=dict)


def measured(
    pids: dict[str, int], url: str, concurrency: int, requests: int, *, tokens: int, spread_s: float
) -> Run:
    """``load`` with the CPU seconds every process spent during it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client = time.process_time()
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        run = runner.run(load(url, concurrency, requests, tokens, spread_s=spread_s))
    run.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    run.cpu["client"] = time.process_time() - client
    return run


#: a streamed chunk with a token's text (the role-only first chunk has "content":"")
CONTENT, EMPTY = b'"content":"', b'"content":""'


def body_of(tokens: int) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "benchmark prompt"}],
            "max_tokens": tokens,
            "stream": True,
        }
    ).encode()


async def one(pool: Http1Pool, path: str, body: bytes, run: Run) -> None:
    """One streamed request; every token's arrival time is that of the read that brought it.

    The client is lean on purpose (one keep-alive pool, no JSON parsing): at
    64 streams a client that parses every chunk with json and httpx's line
    iterator is the slowest process of the run and measures itself.
    """
    start = time.perf_counter()
    last = None
    headers = (("content-type", "application/json"), ("accept", "text/event-stream"))
    try:
        async with pool.request("POST", path, body=body, headers=headers) as resp:
            if resp.status != 200:
                run.failed += 1
                async for _ in resp.chunks():
                    pass
                return
            async for data in resp.chunks():
                count = data.count(CONTENT) - data.count(EMPTY)
                if count <= 0:
                    continue
                t = time.perf_counter()
                if last is None:
                    run.ttft.append(t - start)
                    count -= 1
                else:
                    run.gaps.append(t - last)
                    count -= 1
                run.gaps.extend([0.0] * count)  # tokens that came in the same read
                last = t
    except HttpError:
        run.failed += 1


async def load(
    url: str, concurrency: int, requests: int, tokens: int, *, spread_s: float = 0.0
) -> Run:
    """``requests`` requests from ``concurrency`` workers, each starting the next at once.

    ``spread_s``: worker i starts ``i / concurrency * spread_s`` late. With the
    length of one request, the workers stay spread over it (all requests are
    equally long); with 0 they run in lockstep, every wave arriving at once.
    """
    run = Run()
    split = urlsplit(url)
    body = body_of(tokens)
    pool = Http1Pool(
        f"{split.scheme}://{split.netloc}",
        max_idle=concurrency,
        connect_timeout_s=10,
        read_timeout_s=120,
    )
    async with pool:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker(delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            while not queue.empty():
                queue.get_nowait()
                await one(pool, split.path, body, run)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i / concurrency * spread_s) for i in range(concurrency)))
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


def busy(run: Run) -> float:
    """Cores busy on average: every process's CPU seconds per wall second."""
    return sum(run.cpu.values()) / run.seconds if run.seconds else float("nan")


def report(
    rows: list[tuple[int, int, Run, Run]], tpot_ms: float, tokens: int, *, lockstep: bool
) -> None:
    starts = "all at once (lockstep)" if lockstep else "spread over one request's length"
    print(
        f"sim engine TPOT {tpot_ms} ms, {tokens} tokens per request, worker starts {starts}, "
        "times in ms"
    )
    hdr = (
        f"{'conc':>5} {'reqs':>5} | {'TTFT p50 direct/gw/+/ratio':>31} |"
        f" {'TTFT p99 direct/gw/+/ratio':>33} | {'gap p50 direct/gw/+':>21} |"
        f" {'req/s direct/gw/ratio':>21} | {'cores busy':>10} | failed"
    )
    print(hdr)
    print("-" * len(hdr))
    for c, n, d, g in rows:
        t50d, t50g = pct(d.ttft, 50), pct(g.ttft, 50)
        t99d, t99g = pct(d.ttft, 99), pct(g.ttft, 99)
        g50d, g50g = pct(d.gaps, 50), pct(g.gaps, 50)
        rd, rg = n / d.seconds, n / g.seconds
        print(
            f"{c:>5} {n:>5} | {t50d:7.2f} {t50g:7.2f} {t50g - t50d:+7.2f} {t50g / t50d:5.2f}x |"
            f" {t99d:8.2f} {t99g:8.2f} {t99g - t99d:+8.2f} {t99g / t99d:5.2f}x |"
            f" {g50d:5.2f} {g50g:5.2f} {g50g - g50d:+6.2f} |"
            f" {rd:6.1f} {rg:6.1f} {rg / rd:5.2f}x | {busy(d):4.2f} {busy(g):4.2f} |"
            f" {d.failed}/{g.failed}"
        )
    names = ("client", "engine", "bridge", "gateway", "nats")
    print()
    print("CPU ms per request, direct (client + engine) | gateway path (each process)")
    hdr = f"{'conc':>5} | {'client':>7} {'engine':>7} | " + " ".join(f"{x:>7}" for x in names)
    print(hdr)
    print("-" * len(hdr))
    for c, n, d, g in rows:
        direct = f"{d.cpu['client'] / n * 1e3:7.2f} {d.cpu['engine'] / n * 1e3:7.2f}"
        through = " ".join(f"{g.cpu[x] / n * 1e3:7.2f}" for x in names)
        print(f"{c:>5} | {direct} | {through}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--tpot-ms", type=float, default=5.0, help="the sim engine's TPOT")
    parser.add_argument(
        "--services-from",
        metavar="CHECKOUT",
        help="run the engine, bridge and gateway from another checkout of this repository "
        "(e.g. a git worktree of an older commit), for before/after tables",
    )
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="start all workers at once (each wave of requests arrives in one burst); "
        "by default their starts are spread over one request's length",
    )
    args = parser.parse_args()
    spread = 0.0 if args.lockstep else args.tokens * args.tpot_ms / 1000
    levels = [int(c) for c in args.concurrency.split(",")]
    slots = max(levels)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="migserve-bench-") as tmp:
        work = Path(tmp)
        nats = start_nats_server(work / "nats")
        try:
            env = {**os.environ, "MIGSERVE_NATS_URL": nats.url, "MIGSERVE_LOG_LEVEL": "WARNING"}
            if args.services_from:
                env["PYTHONPATH"] = code_path(Path(args.services_from))
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
            pids = {
                "engine": procs[0].pid,
                "bridge": procs[1].pid,
                "gateway": gateway.pid,
                "nats": nats.pid,
            }
            rows = []
            cpu0 = cpu_seconds(gateway.pid)
            for c in levels:
                n = max(args.requests, c * 2)
                rows.append(
                    (
                        c,
                        n,
                        measured(
                            pids, engine_url + CHAT, c, n, tokens=args.tokens, spread_s=spread
                        ),
                        measured(pids, gw_url + CHAT, c, n, tokens=args.tokens, spread_s=spread),
                    )
                )
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
    report(rows, args.tpot_ms, args.tokens, lockstep=args.lockstep)
    print(f"gateway: {cpu:.1f} CPU seconds over the runs, peak RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
