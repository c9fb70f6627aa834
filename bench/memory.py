"""What long streamed answers cost the server in memory, and what their stored log costs on disk.

Starts a fake Chat Completions upstream whose answers are ``--chars`` characters long
(``opensupervisor.testing.bulk_upstream``, deltas of ``--chunk`` characters) and ``opensupervisor
serve`` as a real process (SQLite state, the text cap raised above the answers' size), then runs
``--streams`` streaming clients at once and samples the server's resident memory from ``/proc``.
Prints the baseline and peak RSS, the overhead per stream as a multiple of its text, and the stored
bytes (event log and items) per response as a multiple of its text. A server growing past
``--max-rss-mb`` is killed, so that a regression cannot take the machine down.

    .venv/bin/python bench/memory.py [--streams 40] [--chars 20000000] [--chunk 8192]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import httpx

TOKEN = "bench-token"
HERE = Path(__file__).resolve()
MODEL = "bulk"


def run_upstream(port: int) -> None:
    import uvicorn

    from opensupervisor.testing.bulk_upstream import BulkUpstream

    uvicorn.run(BulkUpstream(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Samples a process's RSS every 10 ms; kills it past ``limit_mb``."""

    def __init__(self, proc: subprocess.Popen[bytes], limit_mb: float) -> None:
        super().__init__(daemon=True)
        self.proc, self.limit_mb = proc, limit_mb
        self.peak = 0.0
        self.killed = False
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.01):
            try:
                now = rss_mb(self.proc.pid)
            except OSError:
                return
            self.peak = max(self.peak, now)
            if now > self.limit_mb:
                self.killed = True
                self.proc.kill()
                return


async def stream_one(session: aiohttp.ClientSession, url: str, chars: int, chunk: int) -> tuple[str, int, str]:
    """One streamed answer read to its end: (the last event's type, bytes received, response id)."""
    body = {"model": MODEL, "input": f"bulk {chars} {chunk}", "stream": True}
    received, head, tail, last = 0, b"", b"", ""
    async with session.post(f"{url}/v1/responses", json=body) as resp:
        resp.raise_for_status()
        async for data in resp.content.iter_chunked(1 << 16):
            received += len(data)
            head = head or data
            window = tail + data
            found = window.rfind(b"event: ")
            if found >= 0 and b"\n" in window[found:]:
                last = window[found + 7:].split(b"\n", 1)[0].decode()
            tail = data[-128:]
    start = head.index(b'"resp_') + 1
    return last, received, head[start:head.index(b'"', start)].decode()


async def load(url: str, streams: int, chars: int, chunk: int) -> list[tuple[str, int, str]]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    connector = aiohttp.TCPConnector(limit=streams + 4)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout,
                                     connector=connector) as session:
        return await asyncio.gather(*(stream_one(session, url, chars, chunk) for _ in range(streams)))


def stored_bytes(db: Path, response_id: str) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT COALESCE(SUM(LENGTH(CAST(event AS BLOB))), 0) FROM os_response_events "
                              "WHERE response_id = ?", (response_id,)).fetchone()[0]
        items = conn.execute("SELECT COALESCE(SUM(LENGTH(CAST(item AS BLOB))), 0) FROM os_response_items "
                             "WHERE response_id = ? AND kind = 'output'", (response_id,)).fetchone()[0]
    return int(events), int(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--chars", type=int, default=20_000_000)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--max-rss-mb", type=float, default=12_000)
    parser.add_argument("--role", choices=["bench", "upstream"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "upstream":
        return run_upstream(args.port)
    tmp = Path(tempfile.mkdtemp(prefix="osbench-memory-"))
    up_port, port = free_port(), free_port()
    (tmp / "workspace.toml").write_text(
        f'[limits]\nmax_output_chars = {max(args.chars * 2, 1024)}\n\n'
        f'[models.{MODEL}]\nprovider = "openai-chat"\nbase_url = "http://127.0.0.1:{up_port}/v1"\n'
        f'upstream_model = "bulk"\nmax_retries = 0\ntimeout_s = 600\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSUPERVISOR_")}
    db = tmp / "state.db"
    env.update(OPENSUPERVISOR_ADMIN_TOKEN=TOKEN, OPENSUPERVISOR_PORT=str(port), OPENSUPERVISOR_DATA_DIR=str(tmp),
               OPENSUPERVISOR_CONFIG=str(tmp / "workspace.toml"), OPENSUPERVISOR_DATABASE_URL=f"sqlite:///{db}")
    upstream = subprocess.Popen([sys.executable, str(HERE), "--role", "upstream", "--port", str(up_port)])
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "opensupervisor", "serve", "--log-level", "warning"],
                              cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(f"http://127.0.0.1:{up_port}/", upstream)
        wait_up(f"{url}/healthz", server)
        asyncio.run(load(url, 2, 100_000, args.chunk))  # warm: imports, pools, the first writes
        baseline = rss_mb(server.pid)
        sampler = Sampler(server, args.max_rss_mb)
        sampler.start()
        started = time.perf_counter()
        results = asyncio.run(load(url, args.streams, args.chars, args.chunk))
        seconds = time.perf_counter() - started
        sampler.stopping.set()
        sampler.join()
        report(args, baseline, sampler, results, seconds, server, db)
    finally:
        for proc in (server, upstream):
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def report(args: argparse.Namespace, baseline: float, sampler: Sampler, results: list[tuple[str, int, str]],
           seconds: float, server: subprocess.Popen[bytes], db: Path) -> None:
    text_mb = args.chars / 1e6
    print(f"{args.streams} streams at once of {text_mb:g} MB answers in {args.chunk}-character deltas")
    if sampler.killed:
        print(f"the server passed {args.max_rss_mb:.0f} MB of RSS and was killed")
        return
    ends = sorted({r[0] for r in results})
    print(f"  ended with {', '.join(ends)} in {seconds:.1f} s; {sum(r[1] for r in results) / 1e6:,.0f} MB streamed")
    high = max(sampler.peak, rss_mb(server.pid, "VmHWM"))
    overhead = (high - baseline) * 1024 * 1024 / (args.streams * args.chars)
    print(f"  server RSS: baseline {baseline:,.0f} MB, peak {high:,.0f} MB")
    print(f"  per stream: {(high - baseline) / args.streams:,.1f} MB = {overhead:.2f}x its text")
    events, items = stored_bytes(db, results[0][2])
    print(f"  stored per response: event log {events / 1e6:,.2f} MB = {events / args.chars:.2f}x its text, "
          f"output items {items / 1e6:,.2f} MB = {items / args.chars:.2f}x")


if __name__ == "__main__":
    main()
