"""The console's session (cookie, CSRF, sign-out, a revoked token) and the listings it reads
(``GET /v1/responses``, ``/v1/responses/{id}/events``, ``/v1/tools``), over HTTP as an attacker
and a script would use them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import MODEL, Server, ThreadServer
from tests.test_identity import admin, make_user
from tests.test_seed_snippets import demo_tools_workspace


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console-api")
    with ThreadServer(f"sqlite:///{folder}/state.db") as server:
        yield server


def signed_in(server: Server, token: str) -> tuple[httpx.Client, str]:
    http = httpx.Client(base_url=server.url)
    answer = http.post("/console/session", json={"token": token})
    assert answer.status_code == 200, answer.text
    return http, answer.json()["csrf_token"]


def test_signing_in_sets_a_strict_httponly_cookie_that_authenticates_reads(running: Server) -> None:
    token = make_user(running, "cora")
    http, csrf = signed_in(running, token)
    cookie = http.post("/console/session", json={"token": token}).headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert token not in cookie  # sealed with the server's key, not the token in the clear
    me = http.get("/console/session").json()
    assert (me["name"], me["admin"]) == ("cora", False) and len(csrf) > 20
    assert http.get("/v1/models").status_code == 200
    http.close()


def test_a_change_through_the_cookie_needs_the_csrf_token_and_the_own_origin(running: Server) -> None:
    http, csrf = signed_in(running, make_user(running, "dora"))
    body = {"model": MODEL, "input": "hello"}
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}):
        refused = http.post("/v1/responses", json=body, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["code"] == "csrf_failed"
    listed = http.get("/v1/responses").json()["data"]
    assert listed == []  # nothing was created by the refused requests
    made = http.post("/v1/responses", json=body, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 200 and made.json()["status"] == "completed"
    # Another session's CSRF token does not fit this one.
    other, other_csrf = signed_in(running, make_user(running, "dora2"))
    assert http.post("/v1/responses", json=body, headers={"X-CSRF-Token": other_csrf}).status_code == 403
    other.close()
    http.close()


def test_a_forged_or_foreign_cookie_is_no_session(running: Server) -> None:
    for value in ("garbage", "gAAAAABnot-a-fernet-token", ""):
        with httpx.Client(base_url=running.url, cookies={"os_console": value}) as http:
            answer = http.get("/console/session")
            assert answer.status_code == 401 and answer.json()["error"]["type"] == "invalid_request_error"


def test_bad_sign_ins_are_refused_naming_the_field(running: Server) -> None:
    with httpx.Client(base_url=running.url) as http:
        for body, status, param in (({}, 400, "token"), ({"token": ""}, 400, "token"), ({"token": 7}, 400, "token"),
                                    ({"token": "osp_wrong"}, 401, None)):
            answer = http.post("/console/session", json=body)
            assert answer.status_code == status, body
            assert answer.json()["error"]["param"] == param
            assert "set-cookie" not in answer.headers
        assert http.post("/console/session", content=b"{").status_code == 400


def test_a_revoked_token_ends_its_session_and_sign_out_clears_the_cookie(running: Server) -> None:
    token = make_user(running, "erin")
    http, csrf = signed_in(running, token)
    with admin(running) as root:
        [issued] = root.get("/admin/v1/tokens", params={"principal": "erin"}).json()["data"]
        assert root.delete(f"/admin/v1/tokens/{issued['id']}").status_code == 200

    def ended() -> bool:
        return http.get("/console/session").status_code == 401

    from tests.conftest import wait_until
    wait_until(ended, timeout=15, what="the revoked token's session to end")
    http.close()
    http, csrf = signed_in(running, make_user(running, "erin2"))
    out = http.delete("/console/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200 and "os_console=" in out.headers["set-cookie"]
    assert http.get("/console/session").status_code == 401  # the client dropped the cleared cookie
    http.close()


def test_a_websocket_handshake_does_not_count_the_cookie(running: Server) -> None:
    http, _ = signed_in(running, make_user(running, "fay"))
    cookie = f"os_console={http.cookies['os_console']}"
    url = running.url.replace("http://", "ws://") + "/v1/responses"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Cookie": cookie, "Origin": "https://evil.example"}).close()
    assert refused.value.response.status_code == 401
    http.close()


def test_the_console_page_and_its_files_load_only_from_this_server(running: Server) -> None:
    with httpx.Client(base_url=running.url) as http:
        page = http.get("/console")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "http" not in page.text.replace("http-equiv", "")  # no CDN
        assert http.get("/console/assets/app.js").headers["content-type"].startswith("text/javascript")
        # The page names its files under a digest, which browsers keep; a file's plain name is asked again.
        [script] = [line for line in page.text.splitlines() if 'type="module"' in line]
        versioned = script.split('src="')[1].split('"')[0]
        assert versioned.startswith("/console/assets/") and versioned.endswith("/app.js") and "{{" not in versioned
        kept = http.get(versioned)
        assert kept.status_code == 200 and "immutable" in kept.headers["cache-control"]
        assert kept.content == http.get("/console/assets/app.js").content
        assert http.get("/console/assets/app.js").headers["cache-control"] == "no-cache"
        assert http.get("/console/assets/0123456789abcdef/app.js").status_code == 404  # another version's
        for bad in ("../__init__.py", "..%2f..%2fsettings.py", "nope.js", "app.py"):
            assert http.get(f"/console/assets/{bad}").status_code == 404, bad


def _create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    made = http.post("/v1/responses", json={"model": MODEL, "input": "hi", **body})
    assert made.status_code == 200, made.text
    return dict(made.json()) if made.headers["content-type"].startswith("application/json") else {}


def test_the_responses_listing_is_the_callers_own_filtered_and_paged(running: Server) -> None:
    token = make_user(running, "gus")
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {token}"}) as http:
        made = [_create(http, metadata={"n": str(n)}) for n in range(5)]
        _create(http, store=False)  # not stored: not listed
        page1 = http.get("/v1/responses", params={"limit": 2}).json()
        assert [r["id"] for r in page1["data"]] == [made[4]["id"], made[3]["id"]] and page1["has_more"]
        assert page1["data"][0]["user"] == "gus" and "output" not in page1["data"][0]
        page2 = http.get("/v1/responses", params={"limit": 2, "after": page1["last_id"]}).json()
        assert [r["id"] for r in page2["data"]] == [made[2]["id"], made[1]["id"]]
        oldest = http.get("/v1/responses", params={"order": "asc", "limit": 1}).json()
        assert oldest["data"][0]["id"] == made[0]["id"]
        assert len(http.get("/v1/responses", params={"model": MODEL, "status": "completed"}).json()["data"]) == 5
        assert http.get("/v1/responses", params={"model": "other"}).json()["data"] == []
        assert http.get("/v1/responses", params={"background": "true"}).json()["data"] == []
        bad = {"status": "done", "background": "yes", "limit": "0", "order": "up", "since": "-1", "after": "resp_nope"}
        for key, value in bad.items():
            answer = http.get("/v1/responses", params={key: value})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == key, (key, answer.text)
        assert http.get("/v1/responses", params={"user": "admin"}).status_code == 403
    with admin(running) as root:
        theirs = root.get("/v1/responses", params={"user": "gus", "limit": 100}).json()["data"]
        assert {r["id"] for r in theirs} == {m["id"] for m in made} and {r["user"] for r in theirs} == {"gus"}
        assert root.get("/v1/responses", params={"user": "nobody"}).status_code == 400
    other = make_user(running, "hal")
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {other}"}) as http:
        assert http.get("/v1/responses").json()["data"] == []  # gus's are not hal's
        # Another's response as a cursor is no cursor (it reveals nothing of it).
        assert http.get("/v1/responses", params={"after": made[2]["id"]}).status_code == 400
        assert http.get(f"/v1/responses/{made[0]['id']}/events").status_code == 404


def test_a_streamed_responses_event_log_reads_as_json(running: Server) -> None:
    with admin(running) as http:
        with http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as streamed:
            lines = [line for line in streamed.iter_lines() if line.startswith("data: {")]
        response_id = httpx.Response(200, content=lines[0][6:]).json()["response"]["id"]
        log = http.get(f"/v1/responses/{response_id}/events").json()
        assert [e["sequence_number"] for e in log["data"]] == list(range(len(lines)))
        assert log["data"][-1]["type"] == "response.completed" and not log["has_more"]
        tail = http.get(f"/v1/responses/{response_id}/events", params={"after": len(lines) - 3, "limit": 1}).json()
        assert [e["sequence_number"] for e in tail["data"]] == [len(lines) - 2] and tail["has_more"]
        for key, value in (("after", "-2"), ("after", "x"), ("limit", "0"), ("limit", "5001")):
            bad = http.get(f"/v1/responses/{response_id}/events", params={key: value})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == key, (key, value)
        for value in ("0", "101", "many"):
            bad = http.get("/v1/approvals", params={"limit": value})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit", value
        assert http.get("/v1/approvals").json() == {"object": "list", "data": []}
        plain = _create(http)
        refused = http.get(f"/v1/responses/{plain['id']}/events")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_event_log"


def test_the_tools_listing_names_only_what_the_caller_may_use(tmp_path: Path) -> None:
    config = demo_tools_workspace(tmp_path, "")
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", config) as server:
        with admin(server) as root:
            everything = root.get("/v1/tools").json()["data"]
            kinds = {(t["type"], t["name"]) for t in everything}
            assert {("genie_space", "reviews"), ("uc_function", "main.support.flag_urgent"), ("app", "tickets"),
                    ("knowledge_assistant", "handbook"), ("uc_connection", "web_search")} <= kinds
            reviews = next(t for t in everything if t["name"] == "reviews")
            assert reviews["tool"] == {"type": "genie_space", "genie_space": {
                "id": "reviews", "description": reviews["description"]}}
            token = make_user(server, "ivy")
            make_user(server, "jon")
            assert root.put("/admin/v1/grants/genie_space:reviews", json={"principals": ["jon"]}).status_code == 200
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
            mine = {t["name"] for t in http.get("/v1/tools").json()["data"]}
            assert "reviews" not in mine and "main.support.flag_urgent" in mine
