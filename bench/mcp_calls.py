"""MCP call cost: the calls of one run sharing one session, against a new session for every call.

The server is the demo workspace's search server (a real MCP server over Streamable HTTP) under
uvicorn on loopback. A new session costs the ``initialize`` handshake and the initialized
notification on top of the call. Figures are ratios of one run on one machine.

    .venv/bin/python bench/mcp_calls.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import uvicorn

from opensupervisor.core.context import RunContext
from opensupervisor.demo.servers import search_server
from opensupervisor.identity import ADMIN
from opensupervisor.tools.mcp_client import McpServer
from tools import line, timed  # bench/tools.py (run as a script, bench/ is on the path)


def serve() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(search_server().streamable_http_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}/mcp"


def run_context() -> RunContext:
    request: Any = SimpleNamespace(body=SimpleNamespace(background=False))
    return RunContext(response_id="resp_bench", principal=ADMIN, request=request)


async def main(calls: int) -> None:
    client = McpServer("search", serve(), headers={}, timeout_s=30, allowed_tools=None)
    args = {"query": "what is Databricks", "count": 3}
    shared = run_context()

    async def in_one_run() -> None:
        await client.call(shared, "web-search", args)

    async def new_session() -> None:
        ctx = run_context()
        try:
            await client.call(ctx, "web-search", args)
        finally:
            await ctx.close()

    reused = await timed(calls, in_one_run)
    fresh = await timed(calls, new_session)
    await shared.close()
    print(f"MCP tool call, {calls} calls (Streamable HTTP on loopback)")
    print(line("calls of one run (one session)", reused))
    print(line("a new session per call", fresh, reused))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
