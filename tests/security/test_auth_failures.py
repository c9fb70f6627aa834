"""Failed authentication is counted by reason, logged without the token, and an address that keeps
failing gets 429 until its window clears, while valid credentials from it keep working."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from opensupervisor.identity.auth_failures import WINDOW_S
from opensupervisor.server.app import create_app
from opensupervisor.settings import Settings
from opensupervisor.workspace import load_workspace
from tests import toolkinds
from tests.conftest import MODEL, SCRATCH, SYSTEM_DB, TOKEN, WORKSPACE, ASGIThread, Server, free_port

LIMIT = 5
SECRET = "guess-7f3a9c1d2e"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Guarded:
    url: str
    clock: Clock


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    """A server whose failure limit is small, with a clock the test moves."""
    config = tmp_path / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + f"\n[auth]\nmax_failures_per_minute = {LIMIT}\n")
    port = free_port()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/state.db", config=str(config), admin_token=TOKEN,
                        system_database_url=SYSTEM_DB, data_dir=SCRATCH, port=port)
    app = create_app(settings, workspace=load_workspace(config), tool_setup=toolkinds.register)
    clock = Clock()
    with ASGIThread(app, port) as url:
        app.state.os.auth_failures.clock = clock
        yield Guarded(url, clock)


def metric(url: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^opensupervisor_auth_failures_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def user_token(url: str, name: str) -> str:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/admin/v1/principals", json={"name": name}, headers=admin).status_code == 200
    return str(httpx.post(f"{url}/admin/v1/principals/{name}/tokens", json={}, headers=admin).json()["token"])


def models(url: str, authorization: str | None, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    if client is None:
        return httpx.get(f"{url}/v1/models", headers=headers)
    return client.get(f"{url}/v1/models", headers=headers)


def test_each_failure_is_counted_by_reason_and_logged_without_the_token(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    url = server.url
    revoked = user_token(url, "auth-revoked")
    admin = {"Authorization": f"Bearer {TOKEN}"}
    listed = httpx.get(f"{url}/admin/v1/tokens", params={"principal": "auth-revoked"}, headers=admin).json()
    httpx.delete(f"{url}/admin/v1/tokens/{listed['data'][0]['id']}", headers=admin)
    attempts = [
        (None, "missing"), ("", "missing"),
        (f"Bearer {SECRET}", "unknown"), (f"Bearer osp_{SECRET}", "unknown"), (f"Bearer {TOKEN}x", "unknown"),
        (basic("token", f"osp_{SECRET}"), "unknown"),
        (f"Basic {SECRET}%%", "malformed"), (basic("admin", SECRET), "malformed"), (f"Digest {SECRET}", "malformed"),
        (f"Bearer {revoked}", "revoked"),
    ]
    before = {reason: metric(url, reason) for _, reason in attempts}
    with caplog.at_level(logging.WARNING, logger="opensupervisor.server.auth"):
        for authorization, _ in attempts:
            refused = models(url, authorization)
            assert refused.status_code == 401, refused.text
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    for reason in set(before):
        expected = sum(1 for _, r in attempts if r == reason)
        assert metric(url, reason) == before[reason] + expected, reason
    lines = [r.getMessage() for r in caplog.records if r.name == "opensupervisor.server.auth"]
    assert len(lines) == len(attempts)
    assert all("127.0.0.1" in line for line in lines)
    assert [line.rsplit(": ", 1)[1].split()[0] for line in lines] == [reason for _, reason in attempts]
    logged = "\n".join(lines)
    assert SECRET not in logged and TOKEN not in logged and revoked not in logged


def test_routes_without_auth_and_valid_tokens_are_not_counted(server: Server) -> None:
    url = server.url
    before = sum(metric(url, r) for r in ("missing", "malformed", "unknown", "expired", "revoked", "blocked"))
    for path in ("/healthz", "/metrics", "/.well-known/databricks-config"):
        assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
    assert models(url, f"Bearer {TOKEN}").status_code == 200
    assert models(url, basic("token", TOKEN)).status_code == 200
    after = sum(metric(url, r) for r in ("missing", "malformed", "unknown", "expired", "revoked", "blocked"))
    assert after == before


def test_an_address_that_keeps_failing_gets_429_until_its_window_clears(guarded: Guarded) -> None:
    url, clock = guarded.url, guarded.clock
    alice = user_token(url, "alice")
    for i in range(LIMIT):
        assert models(url, f"Bearer {SECRET}{i}").status_code == 401
        clock.now += 1
    blocked_before = metric(url, "blocked")
    for guess in (f"Bearer {SECRET}", f"Bearer osp_{SECRET}", basic("token", SECRET), f"Basic {SECRET}%", None):
        refused = models(url, guess)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error == {"message": error["message"], "type": "rate_limit_error", "param": None,
                         "code": "too_many_auth_failures"}
        # The oldest failure leaves the window 60 s after it happened; 5 s have passed.
        assert refused.headers["Retry-After"] == str(int(WINDOW_S) - LIMIT)
    assert metric(url, "blocked") == blocked_before + 5
    # Valid credentials from the same address are not slowed: the admin and a user.
    assert models(url, f"Bearer {TOKEN}").status_code == 200
    assert models(url, basic("token", TOKEN)).status_code == 200
    assert models(url, f"Bearer {alice}").status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200
    # Refusals while blocked do not extend the block: once the oldest failure is a minute old,
    # the address may try again, and one more failure blocks it again.
    clock.now += WINDOW_S - LIMIT
    assert models(url, f"Bearer {SECRET}").status_code == 401
    assert models(url, f"Bearer {SECRET}").status_code == 429
    clock.now += WINDOW_S
    assert models(url, f"Bearer {SECRET}").status_code == 401


def test_the_block_is_per_address(guarded: Guarded) -> None:
    url = guarded.url
    for i in range(LIMIT):
        assert models(url, f"Bearer {SECRET}{i}").status_code == 401
    assert models(url, f"Bearer {SECRET}").status_code == 429
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as elsewhere:
        assert models(url, f"Bearer {SECRET}", elsewhere).status_code == 401
        assert models(url, f"Bearer {TOKEN}", elsewhere).status_code == 200


def test_every_authenticated_route_is_guarded(guarded: Guarded) -> None:
    url = guarded.url
    for i in range(LIMIT):
        assert models(url, f"Bearer {SECRET}{i}").status_code == 401
    guess = {"Authorization": f"Bearer {SECRET}"}
    for method, path in (("POST", "/v1/responses"), ("GET", "/v1/responses/resp_x"),
                         ("POST", "/ai-gateway/mlflow/v1/responses"), ("GET", "/mlflow/v1/models"),
                         ("GET", "/admin/v1/principals"), ("GET", "/admin/v1/tokens"),
                         ("POST", "/v1/embeddings")):
        refused = httpx.request(method, f"{url}{path}", headers=guess, json={"model": MODEL, "input": "hi"})
        assert refused.status_code == 429, (path, refused.text)
        assert refused.json()["error"]["code"] == "too_many_auth_failures"
    answered = httpx.post(f"{url}/v1/responses", headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"model": MODEL, "input": "hi"})
    assert answered.status_code == 200 and answered.json()["status"] == "completed"


def test_a_zero_limit_never_blocks(tmp_path: Path) -> None:
    config = tmp_path / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + "\n[auth]\nmax_failures_per_minute = 0\n")
    port = free_port()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/state.db", config=str(config), admin_token=TOKEN,
                        system_database_url=SYSTEM_DB, data_dir=SCRATCH, port=port)
    app = create_app(settings, workspace=load_workspace(config), tool_setup=toolkinds.register)
    with ASGIThread(app, port) as url:
        assert all(models(url, f"Bearer {SECRET}{i}").status_code == 401 for i in range(3 * LIMIT))
