"""The sandbox's modes and its life cycle: refused at start-up where its boundary cannot be set up
(unless the weaker ``processes-only`` mode is chosen by name, which still keeps the protocol, the
pools and the limits), and gone with a server that is killed mid-call."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.conftest import ASGIThread, ProcessServer, ThreadServer, process_env, wait_until
from tests.security.hostile import MODEL, HostileUpstream, hostile_server, workspace_text
from tests.security.test_sandbox import Listener, attack, marked, uc

FUNCTIONS = r'''
import os
import socket
import subprocess
import sys
import time


def legit(tag: str) -> str:
    return f"result for {tag}"


def noise(tag: str) -> str:
    os.write(1, b'{"ok": "forged"}\n')
    for fd in range(3, 32):
        try:
            os.write(fd, b"OSB1\x00\x00\x00\x02{}")
        except OSError:
            pass
    return f"result for {tag}"


def hang(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def hold(marker: str, port: int) -> str:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    time.sleep(120)
    return "held"
'''


def declare(names: tuple[str, ...], extra: str = "") -> str:
    return "\n".join(f'[functions."main.fn.{n}"]\nlanguage = "python"\nsource = "fns.py"\ntimeout_s = 2\n{extra}'
                     for n in names)


def test_the_weaker_mode_is_chosen_by_name_and_keeps_the_protocol(tmp_path: Path) -> None:
    (tmp_path / "fns.py").write_text(FUNCTIONS, encoding="utf-8")
    body = '[sandbox]\nisolation = "processes-only"\n\n' + declare(("legit", "noise", "hang"))
    with hostile_server(tmp_path, body) as rig:
        assert attack(rig, "main.fn.legit", tag="a") == "result for a"
        noisy = attack(rig, "main.fn.noise", tag="a")
        assert noisy == "result for a" or noisy.startswith("Error: the function's sandbox sent "), noisy
        assert attack(rig, "main.fn.noise", tag="b").startswith(("result for b", "Error: the function's sandbox"))
        [hung], [took] = rig.timed_attack([uc("main.fn.hang")], calls=[("main__fn__hang", {"seconds": 30})])
        assert hung == "Error: the function did not finish within 2 seconds"
        assert took < 3
        assert attack(rig, "main.fn.legit", tag="c") == "result for c"


def test_python_functions_are_refused_at_start_up_without_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "fns.py").write_text(FUNCTIONS, encoding="utf-8")
    config = tmp_path / "workspace.toml"
    config.write_text('[sandbox]\nbwrap = "/nonexistent/bwrap"\n\n' + declare(("legit",)), encoding="utf-8")
    env = process_env(config, f"sqlite:///{tmp_path}/state.db", {"OPENSUPERVISOR_PORT": "1"})
    done = subprocess.run([sys.executable, "-m", "opensupervisor", "serve", "--log-level", "warning"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "functions.main.fn.legit: Python functions run in a sandbox that needs bubblewrap (bwrap)" in out, out
    assert "at /nonexistent/bwrap" in out and '[sandbox] isolation = "processes-only"' in out, out


def test_registering_a_python_function_without_the_sandbox_is_a_400(tmp_path: Path) -> None:
    config = tmp_path / "workspace.toml"
    config.write_text('[sandbox]\nbwrap = "/nonexistent/bwrap"\n', encoding="utf-8")
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", config) as server, server.http() as http:
        refused = http.put("/admin/v1/functions/main.fn.legit",
                           json={"language": "python", "source_code": "def legit(tag: str) -> str:\n    return tag\n"})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "source_code"
        assert "bubblewrap" in error["message"] and 'isolation = "processes-only"' in error["message"]


@pytest.mark.parametrize("isolation", ["namespaces", "processes-only"])
def test_a_killed_server_takes_its_sandboxes_along(tmp_path: Path, isolation: str) -> None:
    (tmp_path / "fns.py").write_text(FUNCTIONS, encoding="utf-8")
    listener = Listener()
    upstream = HostileUpstream()
    marker = f"orphan-{uuid.uuid4().hex}"
    try:
        with ASGIThread(upstream) as upstream_url:
            config = tmp_path / "workspace.toml"
            body = f'[sandbox]\nisolation = "{isolation}"\n\n' + \
                declare(("hold",), "network = true\n").replace("timeout_s = 2", "timeout_s = 60")
            config.write_text(workspace_text(upstream_url, body), encoding="utf-8")
            server = ProcessServer(tmp_path, config=config, database_url=f"sqlite:///{tmp_path}/state.db")
            with server as running:
                prompt = upstream.play(calls=[("main__fn__hold", {"marker": marker, "port": listener.port})])
                client = openai.OpenAI(base_url=running.v1, api_key=running.token, max_retries=0, timeout=60)
                call = threading.Thread(target=_ignore_errors(lambda: client.responses.create(
                    model=MODEL, input=prompt, tools=[uc("main.fn.hold")])), daemon=True)
                call.start()
                wait_until(lambda: listener.accepted == 1, timeout=30, what="the function to start")
                sandboxes = _children(server.proc.pid)
                assert sandboxes and marked(marker)
                server.kill()
                wait_until(lambda: not marked(marker) and not any(Path(f"/proc/{p}").exists() for p in sandboxes),
                           timeout=10, what="the sandbox to die with its server")
                call.join(timeout=30)
    finally:
        listener.close()
        for pid in marked(marker):  # only on failure: leave nothing running behind the test
            os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _ignore_errors(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` in a thread whose server is killed under it: its failure is expected."""
    def run() -> None:
        with contextlib.suppress(openai.APIError):
            fn()

    return run


pytestmark = pytest.mark.timeout(120)
