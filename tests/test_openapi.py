"""``/openapi.json`` describes the real routes, and requests generated from it (valid and invalid
alike, by schemathesis) never get a 5xx; every error is OpenAI-shaped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from starlette.routing import Route

from opensupervisor.knowledge.local_embedder import BUNDLED
from opensupervisor.server.routes import routes
from tests.conftest import MODEL, Server, ThreadServer

# Examples per operation and mode: ~50 operations, both modes, about a minute in all.
EXAMPLES = 5
UNDOCUMENTED = {("get", "/metrics"), ("get", "/openapi.json"), ("get", "/docs"), ("get", "/docs/start.js"),
                ("get", "/docs/assets/{name}"), ("get", "/console"), ("get", "/console/"),
                ("get", "/console/assets/{name}")}


def test_the_document_covers_every_json_route(server: Server) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method, path) for path, item in doc["paths"].items() for method in item
                  if not method.startswith("x-")}
    real = {(m.lower(), r.path.replace(":path}", "}")) for r in routes() if isinstance(r, Route)
            for m in r.methods or () if m != "HEAD"}
    assert documented == real - UNDOCUMENTED
    create = doc["paths"]["/v1/responses"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create == {"$ref": "#/components/schemas/CreateResponseRequest"}
    for prefix in ("/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1"):
        headers = [p for p in doc["paths"][f"{prefix}/responses"]["post"]["parameters"] if p["in"] == "header"]
        assert [(p["name"], p["schema"]["maxLength"]) for p in headers] == [("Idempotency-Key", 255)]
        socket = doc["paths"][f"{prefix}/responses"]["x-openresponses-websocket"]
        assert socket["clientMessage"]["allOf"] == [{"$ref": "#/components/schemas/CreateResponseRequest"}]
    fields = doc["components"]["schemas"]["CreateResponseRequest"]["properties"]
    assert fields["max_output_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


def _problems(case: Any, response: Any) -> list[str]:
    where = f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:300]}"
    if response.status_code >= 500:
        return [f"{response.status_code} for {where}: {response.text[:300]}"]
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
        except (ValueError, KeyError, AssertionError, TypeError):
            return [f"not an OpenAI-shaped error for {where}: {response.text[:300]}"]
    return []


def _known(case: Any) -> Any:
    """Valid cases name a model that exists, so they get past the lookup to the code behind it."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = BUNDLED if case.path.endswith("/embeddings") else MODEL
    params = case.path_parameters or {}
    for key in ("model", "name"):
        if key in params and ("rate-limits" in case.path or case.path.endswith("/ai-gateway")):
            params[key] = MODEL
    return case


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: generated admin calls set rate limits and grants no other test expects."""
    with ThreadServer(f"sqlite:///{tmp_path_factory.mktemp('fuzzed') / 'state.db'}") as srv:
        yield srv


# schemathesis's strategies draw from `random` themselves, which hypothesis warns about.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_generated_requests_never_get_a_server_error(fuzzed: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    headers = {"Authorization": f"Bearer {fuzzed.token}"}
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy.map(_known) if mode is GenerationMode.POSITIVE else strategy)
            def run(case: Any) -> None:
                problems.extend(_problems(case, case.call(headers=headers, timeout=30)))

            try:
                run()
            except Unsatisfiable:  # no parameters and no body: there is no invalid request to make
                assert mode is GenerationMode.NEGATIVE
    assert not problems, "\n".join(problems[:20])


def test_the_docs_page_is_served_from_the_package(server: Server) -> None:
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/") for s in sources)  # nothing from another host
    start = httpx.get(f"{server.url}/docs/start.js")
    assert start.status_code == 200 and '"/openapi.json"' in start.text
    for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        asset = httpx.get(f"{server.url}/docs/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert len(asset.content) > 10_000
    for name in ("index.css", "..%2F__init__.py", "swagger-editor.js", "LICENSE"):
        missing = httpx.get(f"{server.url}/docs/assets/{name}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
