"""Shared fixtures: real servers on loopback, real databases, and the real client SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from opensupervisor.core.contracts import Model
from opensupervisor.server.app import create_app
from opensupervisor.settings import Settings
from opensupervisor.workspace import load_workspace
from tests import toolkinds

TESTS = Path(__file__).parent
WORKSPACE = TESTS / "workspace.toml"
TOKEN = "test-admin-token"
PG_URL = os.environ.get("OPENSUPERVISOR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MODEL = "test-model"
# DBOS keeps one instance per process: the in-thread servers of a test process share this private
# system database, whichever of them starts first (never PostgreSQL's, which other processes share).
SCRATCH = Path(tempfile.mkdtemp(prefix="opensupervisor-tests-"))
SYSTEM_DB = f"sqlite:///{SCRATCH}/dbos.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Server:
    url: str
    token: str = TOKEN
    # The application, when it runs in this process (``ThreadServer``).
    app: Any = field(default=None, repr=False)

    def model(self, name: str) -> Model:
        """The catalog's model ``name``, the very instance that serves this server's requests."""
        assert self.app is not None, "only a server in this process shares its models with the test"
        model: Model = self.app.state.os.catalog.get(name)
        return model

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=self.token, max_retries=0, **kwargs)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=self.token, max_retries=0)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


class ASGIThread:
    """Any ASGI app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_until(lambda: self.server.started, what="a loopback server to start")
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class ThreadServer:
    """The real app on a loopback port, in a thread of this process."""

    def __init__(self, database_url: str, workspace: Path = WORKSPACE) -> None:
        port = free_port()
        settings = Settings(database_url=database_url, config=str(workspace), admin_token=TOKEN,
                            system_database_url=SYSTEM_DB, data_dir=SCRATCH, port=port)
        self.app = create_app(settings, workspace=load_workspace(workspace), tool_setup=toolkinds.register)
        self.loopback = ASGIThread(self.app, port)

    def __enter__(self) -> Server:
        return Server(self.loopback.__enter__(), app=self.app)

    def __exit__(self, *exc: object) -> None:
        self.loopback.__exit__(*exc)


def require_postgres() -> str:
    """The PostgreSQL URL; a missing server fails the test run instead of skipping it."""
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is required at {PG_URL} and is not reachable: {exc}", pytrace=False)
    return PG_URL


@contextlib.contextmanager
def own_database(url: str) -> Iterator[str]:
    """A PostgreSQL database of the test's own, dropped afterwards: other test processes share the
    server's, and what they store (or their housekeeping) must not meet this test's rows."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"own_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("db") / "state.db"
    with ThreadServer(f"sqlite:///{db}") as srv:
        yield srv


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    with ThreadServer(require_postgres()) as srv:
        yield srv


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request: pytest.FixtureRequest) -> Server:
    name = "server" if request.param == "sqlite" else "pg_server"
    srv: Server = request.getfixturevalue(name)
    return srv


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return server.client()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def process_env(config: Path | None, database_url: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    """The environment of an ``opensupervisor`` child process (tests' plugin modules importable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSUPERVISOR_")}
    # The caller's own PYTHONPATH stays in front (a checkout other than the installed one).
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(OPENSUPERVISOR_ADMIN_TOKEN=TOKEN, PYTHONPATH=os.pathsep.join([*paths, str(TESTS.parent)]))
    if config is not None:
        env["OPENSUPERVISOR_CONFIG"] = str(config)
    if database_url is not None:
        env["OPENSUPERVISOR_DATABASE_URL"] = database_url
    env.update(extra or {})
    return env


class ProcessServer:
    """``opensupervisor serve`` as a separate process, as a user starts it."""

    def __init__(self, workdir: Path, *, config: Path | None = None, database_url: str | None = None,
                 env: dict[str, str] | None = None, log_name: str = "server.log") -> None:
        self.port = free_port()
        self.workdir = workdir
        full_env = process_env(config, database_url, env)
        full_env["OPENSUPERVISOR_PORT"] = str(self.port)
        self.log_path = workdir / log_name
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "opensupervisor", "serve", "--log-level", "warning"],
                                     cwd=workdir, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        url = f"http://127.0.0.1:{self.port}"

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}): {self.log_path.read_text()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, what="opensupervisor serve to answer")
        return Server(url)

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self.log.close()

    def kill(self) -> None:
        """kill -9: the process gets no chance to record anything."""
        self.proc.kill()
        self.proc.wait(timeout=15)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class ProcessWorker:
    """``opensupervisor worker``: runs background responses, no HTTP."""

    def __init__(self, workdir: Path, *, config: Path, database_url: str, env: dict[str, str] | None = None,
                 log_name: str = "worker.log") -> None:
        self.log_path = workdir / log_name
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "opensupervisor", "worker", "--log-level", "warning"],
                                     cwd=workdir, env=process_env(config, database_url, env), stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def __enter__(self) -> ProcessWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=15)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker says it takes runs."""
        wait_until(lambda: b"Worker ready" in self.log_path.read_bytes() or self.proc.poll() is not None,
                   timeout=timeout, what="the worker to be ready")
        assert self.proc.poll() is None, self.log_path.read_text()


@pytest.fixture(scope="session")
def process_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo workspace served by a real ``opensupervisor serve`` process."""
    with ProcessServer(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh store's URL on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return require_postgres()
