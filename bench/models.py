"""The embedded model through the server versus raw llama_cpp, in one run.

Prints decode tokens/s and time to first token for both, and their ratio (the goal is at least
0.9 of raw). The same GGUF, prompt, instructions, token budget and greedy sampling on both sides;
the server side is measured by a streaming client, so it includes HTTP, SSE and the loop.

    .venv/bin/python bench/models.py [--runs 5] [--tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import orjson

TOKEN = "bench-token"
INSTRUCTIONS = "You are a storyteller. Write at length."
PROMPT = "Tell a long story about a lighthouse keeper and a storm."


def raw(runs: int, tokens: int) -> tuple[list[float], list[float]]:
    from opensupervisor.models.embedded import load, packaged_model_path

    loaded = load(str(packaged_model_path()), 4096, 2)
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": PROMPT}]
    ttft, rates = [], []
    for _ in range(runs + 1):
        start = time.perf_counter()
        stamps = []
        for chunk in loaded.llama.create_chat_completion(messages, stream=True, max_tokens=tokens, temperature=0.0,
                                                         repeat_penalty=1.1):
            if chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
        ttft.append(stamps[0] - start)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return ttft[1:], rates[1:]  # the first run warms caches up


async def served(base: str, runs: int, tokens: int) -> tuple[list[float], list[float]]:
    body = orjson.dumps({"model": "local", "input": PROMPT, "instructions": INSTRUCTIONS, "stream": True,
                         "max_output_tokens": tokens})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ttft, rates = [], []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(runs + 1):
            start = time.perf_counter()
            stamps = []
            async with session.post(f"{base}/v1/responses", data=body) as resp:
                async for line in resp.content:
                    if line.startswith(b"event: response.output_text.delta"):
                        stamps.append(time.perf_counter())
            ttft.append(stamps[0] - start)
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return ttft[1:], rates[1:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="osbench-models-"))
    (folder / "workspace.toml").write_text('[models.local]\nprovider = "embedded"\nthreads = 2\n')
    port = free_port()
    env = {"OPENSUPERVISOR_PORT": str(port), "OPENSUPERVISOR_ADMIN_TOKEN": TOKEN,
           "OPENSUPERVISOR_DATABASE_URL": f"sqlite:///{folder}/state.db",
           "OPENSUPERVISOR_CONFIG": str(folder / "workspace.toml"), "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen([sys.executable, "-m", "opensupervisor", "serve", "--log-level", "warning"],
                              env=env, cwd=folder)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        s_ttft, s_rate = asyncio.run(served(f"http://127.0.0.1:{port}", args.runs, args.tokens))
    finally:
        server.terminate()
        server.wait(timeout=10)
    r_ttft, r_rate = raw(args.runs, args.tokens)
    med = statistics.median
    print(f"embedded SmolLM2-135M, {args.runs} runs of {args.tokens} tokens, greedy, 2 threads (medians)")
    print(f"  raw llama_cpp        decode {med(r_rate):7.1f} tokens/s   first token {med(r_ttft) * 1000:7.1f} ms")
    print(f"  through the server   decode {med(s_rate):7.1f} tokens/s   first token {med(s_ttft) * 1000:7.1f} ms")
    print(f"  ratio (server / raw) decode {med(s_rate) / med(r_rate):7.2f}")


if __name__ == "__main__":
    main()
