"""How much the server adds on top of its model: latency per request and per loop turn, and throughput.

Starts three processes on loopback: an instant fake OpenAI Chat Completions upstream, OpenSupervisor
(its models point at that upstream; one hosted tool kind that echoes), and this load generator.
Prints p50/p99 latencies and requests per second at several concurrencies, JSON, streamed and over
one WebSocket, and the server's CPU per JSON and per streamed response. Figures are ratios of one
run on one machine; compare them only with figures from the same run.

    .venv/bin/python bench/overhead.py [--requests 400] [--database-url URL] [--streaming]

``--streaming`` prints only the streaming figures (first byte, streams/s, CPU per JSON and per
streamed response), with the store on and off: with ``PYTHONPATH`` naming another checkout's
``src/``, alternate runs compare two versions of the code in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

TOKEN = "bench-token"
HERE = Path(__file__).resolve()


# -- the fake upstream ---------------------------------------------------------------------------


def run_upstream(port: int) -> None:
    import uvicorn

    from opensupervisor.testing.chat_upstream import ChatUpstream

    uvicorn.run(ChatUpstream(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the server under test -----------------------------------------------------------------------


def run_server(port: int, upstream: int, database_url: str) -> None:
    import uvicorn

    from opensupervisor.core.context import RunContext
    from opensupervisor.core.contracts import ToolDef, Toolset
    from opensupervisor.server.app import create_app
    from opensupervisor.settings import Settings
    from opensupervisor.tools.registry import ToolRegistry
    from opensupervisor.workspace import parse_workspace

    class Echo(Toolset):
        async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
            return [ToolDef("echo", "Echoes", {"type": "object", "properties": {}})]

        async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
            return "echo"

    def setup(registry: ToolRegistry) -> None:
        registry.register("bench_echo", lambda spec, ws: Echo())

    workspace = parse_workspace(
        f'[models.bench]\nprovider = "openai-chat"\nbase_url = "http://127.0.0.1:{upstream}/v1"\n'
        'upstream_model = "bench"\nmax_retries = 0\n', source="bench", base_dir=Path.cwd())
    settings = Settings(port=port, database_url=database_url, admin_token=TOKEN,
                        data_dir=Path(tempfile.mkdtemp(prefix="opensupervisor-bench-")))
    app = create_app(settings, workspace=workspace, tool_setup=setup)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, ws="websockets-sansio")


# -- the load generator --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def session(concurrency: int) -> aiohttp.ClientSession:
    # aiohttp, not httpx: on these machines httpx's pool tops out near 800 requests/s at concurrency 16
    # against an instant server, which would measure the load generator instead of the server.
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                                 connector=aiohttp.TCPConnector(limit=concurrency),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def post(client: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with client.post(url, data=orjson.dumps(body)) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise SystemExit(f"{url} answered {resp.status}: {raw[:300]!r}")
        return raw


async def timed(client: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    await post(client, url, body)
    return time.perf_counter() - start


async def latencies(url: str, body: dict[str, Any], n: int) -> list[float]:
    async with session(1) as client:
        for _ in range(20):  # warm up connections and caches
            await timed(client, url, body)
        return [await timed(client, url, body) for _ in range(n)]


async def interleaved(url: str, bodies: list[dict[str, Any]], n: int) -> list[list[float]]:
    """Latencies of several request variants taken in turn, so that drift in the machine's speed
    weighs on all of them alike."""
    out: list[list[float]] = [[] for _ in bodies]
    async with session(1) as client:
        for _ in range(20):
            for body in bodies:
                await timed(client, url, body)
        for _ in range(n):
            for i, body in enumerate(bodies):
                out[i].append(await timed(client, url, body))
    return out


async def first_bytes(url: str, body: dict[str, Any], n: int) -> list[float]:
    """Time from sending a streamed request to its first byte of body."""
    out: list[float] = []
    async with session(1) as client:
        for i in range(n + 20):
            start = time.perf_counter()
            async with client.post(url, data=orjson.dumps(body)) as resp:
                await resp.content.readany()
                if i >= 20:  # the first ones warm up
                    out.append(time.perf_counter() - start)
                await resp.read()
    return out


async def throughput(url: str, body: dict[str, Any], n: int, concurrency: int) -> float:
    async with session(concurrency) as client:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                await timed(client, url, body)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


async def tool_round_trips(url: str, n: int, concurrency: int) -> float:
    """Client function-tool round trips per second: a pending call, then its output sent back."""
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    async with session(concurrency) as client:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                first = orjson.loads(await post(client, url, {"model": "bench", "input": "go", "tools": [tool]}))
                call = first["output"][0]
                await post(client, url, {"model": "bench", "tools": [tool], "previous_response_id": first["id"],
                                         "input": [{"type": "function_call_output", "call_id": call["call_id"],
                                                    "output": "42"}]})

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


async def socket_turns(url: str, body: dict[str, Any], n: int) -> tuple[list[float], float]:
    """``n`` responses one after another on one WebSocket: each one's seconds, and turns per second."""
    from websockets.asyncio.client import connect

    message = orjson.dumps({"type": "response.create", **body}).decode()
    out: list[float] = []
    async with connect(url.replace("http://", "ws://"), additional_headers={"Authorization": f"Bearer {TOKEN}"},
                       max_size=None) as ws:
        for _ in range(20):  # warm up, as the HTTP figures do
            await ws.send(message)
            while orjson.loads(await ws.recv())["type"] not in ("response.completed", "response.failed", "error"):
                pass
        started = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await ws.send(message)
            while orjson.loads(await ws.recv())["type"] not in ("response.completed", "response.failed", "error"):
                pass
            out.append(time.perf_counter() - t)
        rate = n / (time.perf_counter() - started)
    return out, rate


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_request(url: str, bodies: list[dict[str, Any]], n: int, pid: int,
                          blocks: int = 8) -> list[float]:
    """Milliseconds of the server's CPU per request of each body, ``n`` of each one at a time, in
    ``blocks`` alternating blocks (the machine's drift falls on each alike); the median block of each."""
    per_block: list[list[float]] = [[] for _ in bodies]
    size = max(n // blocks, 10)
    for _ in range(blocks):
        for i, body in enumerate(bodies):
            before = cpu_seconds(pid)
            await throughput(url, body, size, 1)
            per_block[i].append((cpu_seconds(pid) - before) / size * 1000)
    return [statistics.median(values) for values in per_block]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(base: str, upstream: str, n: int, store: bool, server_pid: int) -> None:
    text = {"model": "bench", "input": "hi", "store": store}
    one_turn = {"model": "bench", "input": "hi", "store": store}
    two_turns = {"model": "bench", "input": "hi", "store": store, "tools": [{"type": "bench_echo"}]}
    direct = await latencies(f"{upstream}/v1/chat/completions",
                             {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}, n)
    served = await latencies(f"{base}/v1/responses", text, n)
    streamed = await latencies(f"{base}/v1/responses", dict(text, stream=True), n)
    t1 = await latencies(f"{base}/v1/responses", one_turn, n)
    t2 = await latencies(f"{base}/v1/responses", two_turns, n)
    up50, up99 = pct(direct, 0.5), pct(direct, 0.99)
    print(f"\nstore={'on' if store else 'off'}, {n} sequential requests per figure (ms)")
    print(f"  upstream alone (one streamed chat completion)     p50 {up50:6.2f}  p99 {up99:6.2f}")
    print(f"  text response through the server                  p50 {pct(served, .5):6.2f}  "
          f"p99 {pct(served, .99):6.2f}")
    print(f"  added per text response                           p50 {pct(served, .5) - up50:6.2f}  "
          f"p99 {pct(served, .99) - up99:6.2f}")
    print(f"  added per streamed text response                  p50 {pct(streamed, .5) - up50:6.2f}  "
          f"p99 {pct(streamed, .99) - up99:6.2f}")
    socket, per_s = await socket_turns(f"{base}/v1/responses", text, n)
    print(f"  added per WebSocket turn (one connection)         p50 {pct(socket, .5) - up50:6.2f}  "
          f"p99 {pct(socket, .99) - up99:6.2f}   ({per_s:.0f} turns/s)")
    up_ttfb = await first_bytes(f"{upstream}/v1/chat/completions",
                                {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}, n)
    ttfb = await first_bytes(f"{base}/v1/responses", dict(text, stream=True), n)
    print(f"  streaming time to first byte over the upstream's   p50 {pct(ttfb, .5) - pct(up_ttfb, .5):6.2f}  "
          f"p99 {pct(ttfb, .99) - pct(up_ttfb, .99):6.2f}")
    untraced, traced, tabled = await interleaved(f"{base}/v1/responses", [
        two_turns, dict(two_turns, databricks_options={"return_trace": True}),
        dict(two_turns, trace_destination={"catalog_name": "bench", "schema_name": "traces",
                                           "table_prefix": "overhead"})], n)
    base50 = pct(untraced, .5)
    print(f"  two-turn response, tracing off                    p50 {base50:6.2f}  p99 {pct(untraced, .99):6.2f}")
    for label, values in (("tracing on (return_trace)", traced), ("tracing on, trace_destination", tabled)):
        print(f"  two-turn response, {label:31s}p50 {pct(values, .5):6.2f}  p99 {pct(values, .99):6.2f}"
              f"  ({pct(values, .5) / base50:.2f}x)")
    extra = [b - a for a, b in zip(sorted(t1), sorted(t2), strict=True)]
    print(f"  added per extra loop turn (hosted tool, minus one upstream call)  "
          f"p50 {statistics.median(extra) * 1000 - up50:6.2f}")
    for c in (1, 4, 16, 64):
        rps = await throughput(f"{base}/v1/responses", text, max(n, 8 * c), c)
        print(f"  text responses/s at concurrency {c:3d}: {rps:8.1f}")
    await streaming_costs(base, text, n, server_pid)
    for c in (1, 16):
        rps = await tool_round_trips(f"{base}/v1/responses", n // 2, c)
        print(f"  function-tool round trips/s at concurrency {c:3d}: {rps:8.1f}")


async def measure_streaming(base: str, upstream: str, n: int, store: bool, server_pid: int) -> None:
    text = {"model": "bench", "input": "hi", "store": store}
    chat = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    print(f"\nstore={'on' if store else 'off'}, streaming only")
    await throughput(f"{base}/v1/responses", dict(text, stream=True), 200, 8)  # warm
    up_ttfb = await first_bytes(f"{upstream}/v1/chat/completions", chat, n)
    ttfb = await first_bytes(f"{base}/v1/responses", dict(text, stream=True), n)
    print(f"  streaming time to first byte over the upstream's   p50 {pct(ttfb, .5) - pct(up_ttfb, .5):6.2f}  "
          f"p99 {pct(ttfb, .99) - pct(up_ttfb, .99):6.2f}")
    await streaming_costs(base, text, n, server_pid)


async def streaming_costs(base: str, text: dict[str, Any], n: int, server_pid: int) -> None:
    """Streams/s at concurrency 8, and the server's CPU per JSON and per streamed response."""
    streamed_rps = await throughput(f"{base}/v1/responses", dict(text, stream=True), max(n, 64), 8)
    print(f"  streamed text responses/s at concurrency   8: {streamed_rps:8.1f}")
    json_cpu, sse_cpu = await cpu_per_request(f"{base}/v1/responses", [text, dict(text, stream=True)],
                                              max(n, 800), server_pid)
    print(f"  server CPU per text response, JSON / streamed: {json_cpu:5.2f} / {sse_cpu:5.2f} ms "
          f"({sse_cpu / json_cpu:.2f}x; median of 8 alternating blocks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--streaming", action="store_true",
                        help="only the streaming figures: streams/s, first byte, CPU per JSON and streamed response")
    parser.add_argument("--role", choices=["bench", "upstream", "server"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        return run_upstream(args.port)
    if args.role == "server":
        return run_server(args.port, args.upstream_port, args.database_url)
    tmp = tempfile.mkdtemp(prefix="osbench-")
    db = args.database_url or f"sqlite:///{tmp}/bench.db"
    up_port, port = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, str(HERE), "--role", "upstream", "--port", str(up_port)]),
        subprocess.Popen([sys.executable, str(HERE), "--role", "server", "--port", str(port), "--upstream-port",
                          str(up_port), "--database-url", db], env=dict(os.environ)),
    ]
    try:
        wait_for(f"http://127.0.0.1:{up_port}/")
        wait_for(f"http://127.0.0.1:{port}/healthz")
        print(f"OpenSupervisor bench: {os.cpu_count()} cores, state in {db.split(':')[0]}")
        for store in (True, False):
            figures = measure_streaming if args.streaming else measure
            asyncio.run(figures(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{up_port}", args.requests, store,
                                procs[1].pid))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
