"""Rate limits: every level and precedence rule of the gateway, counted across two server processes
on PostgreSQL (and through Redis), answered with 429 and Retry-After."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import AiGatewayRateLimit, AiGatewayRateLimitKey, AiGatewayRateLimitRenewalPeriod

from opensupervisor.identity import Principal
from opensupervisor.identity.limits import Counts, RateLimit, judge, plan, wait_s
from tests.conftest import TOKEN, ProcessServer, Server, require_postgres, wait_until

RUN = secrets.token_hex(4)  # counters outlive a test run in the shared databases: fresh buckets each run
REDIS_URL = "redis://127.0.0.1:6379/0"


def workspace(folder: Path, models: dict[str, str]) -> Path:
    """Scripted models, each with the given ``rate_limits = [...]`` line."""
    text = 'name = "limits"\n'
    for name, limits in models.items():
        text += f'\n[models.{name}]\nprovider = "scripted"\nrate_limits = {limits}\n'
        text += f'[[models.{name}.script]]\nturns = [{{ text = "{"word " * 40}" }}]\n'
    path = folder / "workspace.toml"
    path.write_text(text, encoding="utf-8")
    return path


def user(server: Server, name: str, groups: tuple[str, ...] = ()) -> openai.OpenAI:
    with server.http() as http:
        assert http.post("/admin/v1/principals", json={"name": name}).status_code == 200
        for group in groups:
            made = http.post("/admin/v1/principals", json={"name": group, "kind": "group"})
            assert made.status_code == 200 or made.json()["error"]["code"] == "already_exists"
            assert http.post(f"/admin/v1/principals/{group}/members", json={"member": name}).status_code == 200
        token = http.post(f"/admin/v1/principals/{name}/tokens", json={}).json()["token"]
    return openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0)


def refused(call: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        call()
    error = caught.value
    assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "rate_limit_error"
    assert 1 <= int(error.response.headers["retry-after"]) <= 120
    return error


ENDPOINT = f"ep{RUN}"
GATEWAY = f"gw{RUN}"
LEVELS = f"lv{RUN}"
TOKENS = f"tk{RUN}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two `opensupervisor serve` processes on one PostgreSQL database."""
    folder = tmp_path_factory.mktemp("limits")
    config = workspace(folder, {
        ENDPOINT: '[{ key = "endpoint", calls = 3 }]',
        LEVELS: f'''[{{ key = "user", calls = 1 }}, {{ key = "user", principal = "vip{RUN}", calls = 3 }},
    {{ key = "user_group", principal = "team{RUN}", calls = 2 }},
    {{ key = "user_group", principal = "crew{RUN}", calls = 1 }}]''',
        TOKENS: '[{ key = "user", calls = 100, tokens = 50 }]',
        GATEWAY: '[{ key = "endpoint", calls = 1000 }]',
    })
    url = require_postgres()
    with ProcessServer(folder, config=config, database_url=url, log_name="a.log") as a, \
            ProcessServer(folder, config=config, database_url=url, log_name="b.log") as b:
        yield a, b


def test_an_endpoint_limit_counts_everyone_on_every_process(pair: tuple[Server, Server]) -> None:
    a, b = pair
    first, second = user(a, f"e1{RUN}"), user(b, f"e2{RUN}")
    clients = [first, openai.OpenAI(base_url=b.v1, api_key=first.api_key, max_retries=0), second]
    for client in clients:
        assert client.responses.create(model=ENDPOINT, input="hi").status == "completed"
    error = refused(lambda: second.responses.create(model=ENDPOINT, input="hi"))
    assert "3 queries per minute for the model" in error.body["message"]
    refused(lambda: a.client().responses.create(model=ENDPOINT, input="hi"))  # admins too


def test_user_group_and_default_limits_and_their_precedence(pair: tuple[Server, Server]) -> None:
    a, b = pair

    def on_both(name: str, groups: tuple[str, ...] = ()) -> tuple[openai.OpenAI, openai.OpenAI]:
        here = user(a, name, groups)
        return here, openai.OpenAI(base_url=b.v1, api_key=here.api_key, max_retries=0)

    def ask(client: openai.OpenAI) -> str:
        return str(client.responses.create(model=LEVELS, input="hi").status)

    plain, plain_b = on_both(f"u1{RUN}")
    other, _ = on_both(f"u2{RUN}")
    assert ask(plain) == "completed"
    assert "for each user" in refused(lambda: ask(plain_b)).body["message"]  # default: 1 per user
    assert ask(other) == "completed"  # each user has a bucket of their own
    vip, vip_b = on_both(f"vip{RUN}", (f"team{RUN}",))
    assert [ask(vip), ask(vip_b), ask(vip)] == ["completed"] * 3  # their own limit beats the group's 2
    refused(lambda: ask(vip_b))
    g1, g2 = on_both(f"g1{RUN}", (f"team{RUN}",))[0], on_both(f"g2{RUN}", (f"team{RUN}",))[1]
    assert [ask(g1), ask(g2)] == ["completed"] * 2  # the group's bucket is shared by its members
    assert f"group 'team{RUN}'" in refused(lambda: ask(g1)).body["message"]
    both, both_b = on_both(f"m{RUN}", (f"team{RUN}", f"crew{RUN}"))
    assert ask(both) == "completed"  # team is full, crew is not: limited only past all its groups
    refused(lambda: ask(both_b))


def test_a_request_refused_after_admission_gives_its_call_back(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    fresh = user(a, f"rb{RUN}")
    with pytest.raises(openai.BadRequestError):  # found wrong only while the run is being prepared
        fresh.responses.create(model=LEVELS, input="hi", tool_choice={"type": "function", "name": "nope"})
    assert fresh.responses.create(model=LEVELS, input="hi").status == "completed"  # the 1 call is still there
    refused(lambda: fresh.responses.create(model=LEVELS, input="hi"))


def test_a_token_limit_refuses_once_the_minutes_tokens_are_spent(pair: tuple[Server, Server]) -> None:
    a, b = pair
    here = user(a, f"t{RUN}")
    there = openai.OpenAI(base_url=b.v1, api_key=here.api_key, max_retries=0)
    first = here.responses.create(model=TOKENS, input="hi")
    assert first.usage is not None and first.usage.total_tokens > 50  # one response spends the minute's 50

    def spent() -> bool:  # the tokens are counted off the hot path, a moment after the response
        try:
            there.responses.create(model=TOKENS, input="hi")
        except openai.RateLimitError as exc:
            return "50 tokens per minute" in exc.body["message"]
        return False

    wait_until(spent, timeout=20, what="the token limit to refuse")


def test_limits_set_through_the_gateway_api_apply_and_can_be_removed(pair: tuple[Server, Server]) -> None:
    a, b = pair
    with a.http() as http:
        missing = http.put("/admin/v1/rate-limits/nothing", json={"rate_limits": []})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        for body, param in (({"rate_limits": [{"key": "user_group", "calls": 1}]}, "rate_limits[0]"),
                            ({"rate_limits": [{"key": "endpoint"}]}, "rate_limits[0]"),
                            ({"rate_limits": [{"key": "endpoint", "calls": -1}]}, "rate_limits[0].calls"),
                            ({"rate_limits": [{"key": "everyone", "calls": 1}]}, "rate_limits[0].key"),
                            ({"rate_limits": [{"key": "user", "calls": 1}] * 2}, "rate_limits")):
            bad = http.put(f"/admin/v1/rate-limits/{TOKENS}", json=body)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    sdk = WorkspaceClient(host=a.url, token=TOKEN, auth_type="pat")
    sdk.serving_endpoints.put_ai_gateway(GATEWAY, rate_limits=[AiGatewayRateLimit(
        calls=1, key=AiGatewayRateLimitKey.USER, renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE)])
    with a.http() as http:
        listed = {e["model"]: e for e in http.get("/admin/v1/rate-limits").json()["data"]}
        assert listed[GATEWAY]["source"] == "api" and listed[LEVELS]["source"] == "workspace"
        assert listed[GATEWAY]["rate_limits"] == [{"key": "user", "calls": 1, "renewal_period": "minute"}]
    fresh = user(a, f"api{RUN}")
    fresh_b = openai.OpenAI(base_url=b.v1, api_key=fresh.api_key, max_retries=0)
    assert fresh.responses.create(model=GATEWAY, input="hi").status == "completed"

    def limited_on_b() -> bool:  # the other process reloads the stored limits within seconds
        try:
            fresh_b.responses.create(model=GATEWAY, input="hi")
        except openai.RateLimitError:
            return True
        return False

    wait_until(limited_on_b, timeout=20, what="process b to apply the new limits")
    with a.http() as http:
        assert http.delete(f"/admin/v1/rate-limits/{GATEWAY}").json() == {"model": GATEWAY, "deleted": True}
        assert http.delete(f"/admin/v1/rate-limits/{GATEWAY}").status_code == 404
        restored = {e["model"]: e for e in http.get("/admin/v1/rate-limits").json()["data"]}[GATEWAY]
        assert restored["source"] == "workspace"


def test_redis_counters_are_shared_by_processes_with_separate_databases(tmp_path: Path) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} and is not reachable: {exc}", pytrace=False)
    model, burst = f"rd{RUN}", f"rb{RUN}"
    config = workspace(tmp_path, {model: '[{ key = "endpoint", calls = 2 }]',
                                  burst: '[{ key = "endpoint", calls = 3 }]'})
    env = {"OPENSUPERVISOR_REDIS_URL": REDIS_URL}
    with ProcessServer(tmp_path, config=config, database_url=f"sqlite:///{tmp_path}/a.db", env=env,
                       log_name="a.log") as a, \
            ProcessServer(tmp_path, config=config, database_url=f"sqlite:///{tmp_path}/b.db", env=env,
                          log_name="b.log") as b:
        assert a.client().responses.create(model=model, input="hi").status == "completed"
        assert b.client().responses.create(model=model, input="hi").status == "completed"
        refused(lambda: a.client().responses.create(model=model, input="hi"))
        with httpx.Client(base_url=b.url) as http:  # streaming requests are refused before the stream
            streamed = http.post("/v1/responses", headers={"Authorization": f"Bearer {TOKEN}"},
                                 json={"model": model, "input": "hi", "stream": True})
            assert streamed.status_code == 429 and streamed.headers["content-type"] == "application/json"
        # A burst on both processes at once: exactly the limit gets through, never more.
        clients = [a.client(), b.client()] * 4
        with ThreadPoolExecutor(len(clients)) as pool:
            outcomes = list(pool.map(lambda c: _status(c, burst), clients))
        assert sorted(outcomes) == ["completed"] * 3 + ["refused"] * 5


def _status(client: openai.OpenAI, model: str) -> str:
    try:
        return str(client.responses.create(model=model, input="hi").status)
    except openai.RateLimitError:
        return "refused"


ME = Principal(id="p_1", name="me", groups=frozenset({"a", "b"}))


def test_precedence_rules() -> None:
    limits = [RateLimit(key="endpoint", calls=100), RateLimit(key="user", calls=5),
              RateLimit(key="user_group", principal="a", calls=10),
              RateLimit(key="user_group", principal="b", calls=20)]
    chosen = plan("m", ME, limits)
    assert chosen is not None
    assert [c.bucket for c in chosen.required] == ["m|endpoint"]  # a group limit replaces the default
    assert [c.bucket for c in chosen.any_of] == ["m|group:a", "m|group:b"]
    own = plan("m", ME, [*limits, RateLimit(key="service_principal", principal="me", calls=1)])
    assert own is not None and [c.bucket for c in own.required] == ["m|endpoint", "m|user:me"] and not own.any_of
    outsider = plan("m", Principal(id="p_2", name="x"), limits)
    assert outsider is not None and [c.bucket for c in outsider.required] == ["m|endpoint", "m|user:x"]
    assert plan("m", ME, []) is None

    def counts(**calls: int) -> dict[str, Counts]:
        return {b: Counts(0, 0, calls.get(b.split(":")[-1].split("|")[-1], 1), 0) for b in chosen.buckets}

    assert judge(chosen, counts(a=11, b=5), 0.5).allowed  # past a, not past b
    over = judge(chosen, counts(a=11, b=40), 0.5)
    assert not over.allowed and "group 'a'" in over.refused_by  # the group that frees up first
    assert not judge(chosen, counts(endpoint=101), 0.5).allowed  # the endpoint blocks everyone


def test_the_stricter_of_calls_and_tokens_wins_and_retry_after_is_exact() -> None:
    both = RateLimit(calls=10, tokens=1000)
    assert wait_s(both, Counts(0, 0, 1, 999), 0.0) == 0
    assert wait_s(both, Counts(0, 0, 1, 1000), 0.25) == pytest.approx(45.0)  # the next minute
    assert wait_s(both, Counts(0, 0, 11, 0), 0.5) == pytest.approx(30.0 + 0.1 * 60)
    # Sliding window: 10 calls last minute weigh 5 halfway through; room for one more at 60%.
    assert wait_s(RateLimit(calls=10), Counts(10, 0, 6, 0), 0.5) == pytest.approx(6.0)
    assert wait_s(RateLimit(calls=0), Counts(0, 0, 1, 0), 0.5) == float("inf")
