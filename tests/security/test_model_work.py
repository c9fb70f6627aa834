"""What a model makes the server do is bounded: argument sizes, hosted calls, call ids.

A hostile model (a real Chat Completions upstream that says what a test tells it) writes huge
arguments that ignore the tools' schemas, asks for a hundred hosted calls a turn or keeps calling
turn after turn, and picks call ids that repeat, run to kilobytes or carry control characters.
Every test goes through the real HTTP API with the ``openai`` client and checks that nothing was
lost, nothing ran that should not have, and the server kept answering.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import orjson
import pytest
from mcp.server.fastmcp import FastMCP

import opensupervisor
from opensupervisor.errors import ConfigError
from opensupervisor.workspace import parse_workspace
from tests.conftest import ASGIThread, Server, ThreadServer, wait_until
from tests.security.hostile import MODEL, HostileUpstream, Play, Rig, tool_outputs, workspace_text
from tests.toolkinds import ledger

T = TypeVar("T")
HANDBOOK = Path(opensupervisor.__file__).parent / "demo" / "handbook"
KA: Any = {"type": "knowledge_assistant", "knowledge_assistant": {"knowledge_assistant_id": "handbook"}}
GENIE: Any = {"type": "genie_space", "genie_space": {"id": "reviews"}}
APP: Any = {"type": "app", "app": {"name": "helpdesk"}}
FUNCTION: Any = {"type": "uc_function", "uc_function": {"name": "main.reviews.matching"}}
ECHO: Any = {"type": "uc_connection", "uc_connection": {"name": "echo"}}
LEDGER: Any = {"type": "test_ledger"}
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# A glob whose matching backtracks as much as a glob can: every star may take any run of 'a's.
STARS = "*a" * 128


class Relentless(HostileUpstream):
    """Plays its calls on every turn, not only the first, for plays registered with ``again``."""

    def __init__(self) -> None:
        super().__init__()
        self.relentless: set[int] = set()

    def again(self, play: Play) -> str:
        self.relentless.add(id(play))
        return self.play(play)

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Any) -> None:
        play = self._find(req.get("messages") or [])
        if play is not None and id(play) in self.relentless:
            self.requests.append(req)
            await self._send(req, send, "", self._calls(play))
            return
        await super().answer(req, headers, send)


def echo_server() -> FastMCP:
    server = FastMCP("echo", stateless_http=True, log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Answers with the text it was sent."""
        return f"echo: {len(text)} characters"

    return server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("model-work")
    for doc in ("benefits/leave-policy.md", "it/onboarding.txt", "finance/expenses.md"):  # few: quick to ingest
        (folder / "handbook" / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HANDBOOK / doc, folder / "handbook" / doc)
    with sqlite3.connect(folder / "reviews.db") as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER, body TEXT)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?)", [(1, "great"), (2, "broken")])
    previous = os.environ.get("OPENSUPERVISOR_TEST_LEDGER")
    os.environ["OPENSUPERVISOR_TEST_LEDGER"] = str(folder / "ledger.db")
    yield folder
    if previous is None:
        os.environ.pop("OPENSUPERVISOR_TEST_LEDGER", None)
    else:
        os.environ["OPENSUPERVISOR_TEST_LEDGER"] = previous


def tools_body(mcp_url: str) -> str:
    return f"""
[knowledge_assistants.handbook]
sources = ["handbook"]
ingest_on_start = true
search = "hybrid"

[genie_spaces.reviews]
database_url = "sqlite:///reviews.db"
tables = ["reviews"]

[functions."main.reviews.matching"]
language = "sql"
database_url = "sqlite:///reviews.db"
sql = "SELECT count(*) AS n FROM reviews WHERE body LIKE :pattern"
parameters = [{{ name = "pattern", type = "string" }}]

[apps.helpdesk]
url = "http://127.0.0.1:9/v1"
require_approval = "never"

[connections.echo]
url = "{mcp_url}/mcp"
require_approval = "never"
"""


def serve(folder: Path, upstream: Relentless, body: str, name: str) -> Iterator[Rig]:
    with ASGIThread(upstream) as upstream_url:
        path = folder / f"{name}.toml"
        path.write_text(workspace_text(upstream_url, body), encoding="utf-8")
        with ThreadServer(f"sqlite:///{folder}/{name}.db", path) as server:
            yield Rig(server, upstream, folder)


@pytest.fixture(scope="module")
def rig(folder: Path) -> Iterator[Rig]:
    """Every hosted tool kind, the workspace's default hosted call limits."""
    with ASGIThread(echo_server().streamable_http_app()) as mcp_url:
        yield from serve(folder, Relentless(), tools_body(mcp_url), "defaults")


@pytest.fixture(scope="module")
def small(folder: Path) -> Iterator[Rig]:
    """Small hosted call limits, and turns enough to reach the per-response one."""
    body = "[limits]\nmax_turns = 10\nmax_hosted_calls_per_turn = 5\nmax_hosted_calls_per_response = 12\n"
    yield from serve(folder, Relentless(), body, "small")


def create(rig: Rig, tools: list[Any], play: Play, *, relentless: bool = False, **extra: Any) -> Any:
    prompt = rig.upstream.again(play) if relentless and isinstance(rig.upstream, Relentless) \
        else rig.upstream.play(play)
    client = openai.OpenAI(base_url=rig.server.v1, api_key=rig.server.token, max_retries=0, timeout=120)
    return client.responses.create(model=MODEL, input=prompt, tools=tools, **extra)


PROBE = """
import sys, time, httpx
slowest = 0.0
with httpx.Client(base_url=sys.argv[1], timeout=30) as http:
    for line in iter(sys.stdin.readline, ""):
        if line.strip() == "stop":
            break
        started = time.perf_counter()
        assert http.get("/healthz").status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
        print("ok", flush=True)
print(slowest, flush=True)
"""


def while_probing(server: Server, work: Callable[[], T]) -> tuple[T, float]:
    """``work``'s result, and the slowest ``/healthz`` answer while it ran. The probe is a process of
    its own: in this one it would wait for the interpreter lock of the server's thread."""
    probe = subprocess.Popen([sys.executable, "-c", PROBE, server.url], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert probe.stdin is not None and probe.stdout is not None
    done = threading.Event()

    def pace() -> None:
        assert probe.stdin is not None and probe.stdout is not None
        while not done.is_set():
            probe.stdin.write("go\n")
            probe.stdin.flush()
            assert probe.stdout.readline().strip() == "ok"
            done.wait(0.01)

    pacer = threading.Thread(target=pace, daemon=True)
    pacer.start()
    try:
        result = work()
    finally:
        done.set()
        pacer.join(timeout=30)
    out, _ = probe.communicate("stop\n", timeout=30)
    return result, float(out.split()[-1])


def ingested(rig: Rig) -> None:
    with rig.server.http() as http:
        wait_until(lambda: http.get("/admin/v1/knowledge_assistants").json()["data"][0]["version"] > 0,
                   timeout=120, what="the handbook to be ingested")


# --- (a) argument bounds ------------------------------------------------------------------------


def test_every_schema_states_its_bounds(rig: Rig) -> None:
    create(rig, [KA, GENIE, APP, FUNCTION], Play(calls=[]))
    sent = {t["function"]["name"]: t["function"]["parameters"] for t in rig.upstream.requests[-1]["tools"]}
    assert sent["ka_handbook"]["properties"]["question"]["maxLength"] == 4000
    assert sent["ka_handbook"]["properties"]["source"]["maxLength"] == 256
    assert sent["genie_reviews"]["properties"]["question"]["maxLength"] == 4000
    assert sent["app_helpdesk"]["properties"]["question"]["maxLength"] == 4000
    assert sent["main__reviews__matching"]["properties"]["pattern"]["maxLength"] == 16384


@pytest.mark.parametrize(("tool", "name", "arguments", "expected"), [
    (KA, "ka_handbook", {"question": "Vacation?", "source": "*" * 7000},
     "at source: longer than 256 characters (7,000)"),
    (KA, "ka_handbook", {"question": "Vacation?", "source": STARS + "*" * 200},
     "at source: longer than 256 characters (456)"),
    (KA, "ka_handbook", {"question": "why " * 2000}, "at question: longer than 4,000 characters (8,000)"),
    (GENIE, "genie_reviews", {"question": "q" * 4001}, "at question: longer than 4,000 characters (4,001)"),
    (APP, "app_helpdesk", {"question": "x" * 50_000}, "at question: longer than 4,000 characters (50,000)"),
    (FUNCTION, "main__reviews__matching", {"pattern": "%" * 20_000},
     "at pattern: longer than 16,384 characters (20,000)"),
    (ECHO, "echo", {"text": "e" * 70_000}, "are 70,011 characters long; at most 65,536 are accepted"),
], ids=["ka-7000-char-glob", "ka-backtracking-glob", "ka-question", "genie-question", "app-question",
        "function-string", "mcp-arguments"])
def test_arguments_past_the_bounds_do_not_run(rig: Rig, tool: Any, name: str, arguments: dict[str, Any],
                                              expected: str) -> None:
    (response, slowest) = while_probing(rig.server, lambda: create(rig, [tool], Play(calls=[(name, arguments)])))
    assert response.status == "completed"
    [output] = tool_outputs(response)
    assert output.startswith("Error: ") and expected in output, output
    assert len(output) < 300  # the error does not repeat the model's huge value
    assert slowest < 1.0


def test_arguments_past_the_cap_are_refused_before_they_are_parsed(rig: Rig) -> None:
    raw = "[" * 100_000  # not even JSON: the size alone refuses it
    response = create(rig, [ECHO], Play(calls=[("echo", {})], raw_arguments=[raw]))
    [output] = tool_outputs(response)
    assert output.startswith("Error: the arguments for 'echo' are 100,000 characters long")


def test_arguments_within_the_bounds_still_run(rig: Rig) -> None:
    response = create(rig, [FUNCTION, ECHO], Play(calls=[("main__reviews__matching", {"pattern": "%" * 16_384}),
                                                         ("echo", {"text": "e" * 60_000})]))
    matching, echoed = tool_outputs(response)
    assert not matching.startswith("Error") and echoed == "echo: 60000 characters"


def test_heavy_searches_leave_the_server_responsive(rig: Rig) -> None:
    """Searches at once, each with the longest question and the longest glob the schema allows (one
    that backtracks as much as a glob can, and matches nothing, so the search runs twice): they run
    off the event loop, and /healthz keeps answering."""
    ingested(rig)
    question = ("Which travel expenses, vacation days and onboarding steps apply to new hires " * 60)[:4000]
    calls = [("ka_handbook", {"question": question, "source": glob}) for glob in [STARS, "*" * 256] * 4]
    (response, slowest) = while_probing(rig.server, lambda: create(rig, [KA], Play(calls=calls)))
    outputs = tool_outputs(response)
    assert len(outputs) == 8 and not any(o.startswith("Error") for o in outputs), outputs[:2]
    assert outputs[0].startswith(f"(No document path matches '{STARS}'; all documents were searched.)")
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s"


# --- (b) hosted call limits ---------------------------------------------------------------------


def test_a_hundred_calls_in_one_turn_run_only_the_turn_limit(rig: Rig) -> None:
    calls = [("record", {"label": f"n{i}"}) for i in range(100)]
    response = create(rig, [LEDGER], Play(calls=calls))
    assert response.status == "incomplete" and response.error is None
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_tool_calls"
    outputs = tool_outputs(response)
    assert len(outputs) == 100  # every call is answered: the response can be continued
    assert outputs[:32] == [f"recorded n{i}" for i in range(32)]
    assert all(o == "Error: this call did not run: the limit of 32 hosted tool calls per turn was reached."
               for o in outputs[32:])
    # They ran concurrently: the ledger has them in the order they finished.
    assert sorted(ledger(str(rig.folder / "ledger.db"), response.id)) == sorted(f"n{i}" for i in range(32))


def test_a_model_that_keeps_calling_stops_at_the_response_limit(small: Rig) -> None:
    play = Play(calls=[("record", {"label": f"n{i}"}) for i in range(4)])
    response = create(small, [LEDGER], play, relentless=True)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_tool_calls"
    ran = ledger(str(small.folder / "ledger.db"), response.id)
    assert len(ran) == 12  # three turns of four calls; the fourth turn's calls do not run
    outputs = tool_outputs(response)
    assert len(outputs) == 16 and outputs[12:] == [
        "Error: this call did not run: the limit of 12 hosted tool calls per response was reached."] * 4
    calls = [i for i in response.output if i.type == "function_call"]
    assert len({c.call_id for c in calls}) == 16  # the model repeated its ids every turn; each call has its own


def test_a_turn_past_the_turn_limit_ends_the_response(small: Rig) -> None:
    response = create(small, [LEDGER], Play(calls=[("record", {"label": f"t{i}"}) for i in range(7)]))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_tool_calls"
    assert sorted(ledger(str(small.folder / "ledger.db"), response.id)) == [f"t{i}" for i in range(5)]
    continued = small.server.client().responses.create(model=MODEL, previous_response_id=response.id,
                                                       input="go on", tools=[LEDGER])
    assert continued.status == "completed"  # every call was paired: the conversation goes on


def test_a_lower_max_tool_calls_of_the_request_is_honoured(small: Rig) -> None:
    response = create(small, [LEDGER], Play(calls=[("record", {"label": f"m{i}"}) for i in range(4)]),
                      max_tool_calls=2)
    assert sorted(ledger(str(small.folder / "ledger.db"), response.id)) == ["m0", "m1"]
    assert tool_outputs(response)[2:] == ["Error: the tool call limit (2) was reached."] * 2
    assert response.status == "completed" and response.max_tool_calls == 2


def test_a_higher_max_tool_calls_of_the_request_does_not_lift_the_workspace_limit(small: Rig) -> None:
    play = Play(calls=[("record", {"label": f"h{i}"}) for i in range(4)])
    response = create(small, [LEDGER], play, relentless=True, max_tool_calls=1000)
    assert response.status == "incomplete" and len(ledger(str(small.folder / "ledger.db"), response.id)) == 12


def test_client_calls_and_unknown_tools_are_not_hosted_calls(small: Rig) -> None:
    calls = [("get_weather", {"city": f"c{i}"}) for i in range(8)] + [("nope", {})] * 8
    response = create(small, [WEATHER], Play(calls=calls))
    assert response.status == "completed"
    assert [i.type for i in response.output].count("function_call") == 16
    assert tool_outputs(response) == ["Error: there is no tool named 'nope' available."] * 8


# --- (c) call ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [
    ["same", "same", "same"],
    ["x" * 10_000, "y" * 10_000, "x" * 10_000],
    ["id\x00one", "id\nline\r\n", "\x1b[31mred\x1b[0m"],
    ["", "", ""],
    ["call_0", "call_0", "ok_id"],
    ["ümlaut", "a b", "a/b"],
    [None, None, None],
], ids=["repeated", "10kb", "control-characters", "empty", "partly-repeated", "odd-characters", "missing"])
def test_every_hosted_call_gets_its_own_output(rig: Rig, ids: list[Any]) -> None:
    calls = [("record", {"label": f"l{i}"}) for i in range(3)]
    response = create(rig, [LEDGER], Play(calls=calls, call_ids=ids))
    assert response.status == "completed"
    pairs = {i.call_id: i for i in response.output if i.type == "function_call"}
    assert len(pairs) == 3 and all(len(c) <= 64 and c.isascii() and c.isprintable() for c in pairs)
    answered = {i.call_id: i.output for i in response.output if i.type == "function_call_output"}
    assert {cid: answered[cid] for cid in pairs} == {
        cid: f"recorded {orjson.loads(call.arguments)['label']}" for cid, call in pairs.items()}
    assert sorted(ledger(str(rig.folder / "ledger.db"), response.id)) == ["l0", "l1", "l2"]
    plain = [i for n, i in enumerate(ids)
             if isinstance(i, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", i) and i not in ids[:n]]
    assert set(plain) <= set(pairs)  # a plain id, new to the conversation, is the model's own


def test_an_id_from_an_earlier_turn_is_not_reused(small: Rig) -> None:
    play = Play(calls=[("record", {"label": "again"})], call_ids=["call_fixed"])
    response = create(small, [LEDGER], play, relentless=True, max_tool_calls=3)
    ids = [i.call_id for i in response.output if i.type == "function_call"]
    assert ids[0] == "call_fixed" and len(set(ids)) == len(ids)
    outputs = [i.call_id for i in response.output if i.type == "function_call_output"]
    assert sorted(outputs) == sorted(ids)


def _client_round_trip(rig: Rig, ids: list[str], *, full_history: bool) -> None:
    play = Play(calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})], call_ids=ids)
    prompt = rig.upstream.play(play)
    client = rig.server.client()
    first = client.responses.create(model=MODEL, input=prompt, tools=[WEATHER])
    calls = [i for i in first.output if i.type == "function_call"]
    assert len(calls) == 2 and len({c.call_id for c in calls}) == 2
    answers = [{"type": "function_call_output", "call_id": c.call_id,
                "output": f"sunny in {orjson.loads(c.arguments)['city']}"} for c in calls]
    if full_history:
        history = [{"role": "user", "content": prompt}, *(i.model_dump() for i in first.output), *answers]
        second = client.responses.create(model=MODEL, input=history, tools=[WEATHER])
    else:
        second = client.responses.create(model=MODEL, previous_response_id=first.id, input=answers, tools=[WEATHER])
    assert second.status == "completed"
    assert second.output_text == "Tool said: sunny in Paris | sunny in Oslo"
    messages = rig.upstream.requests[-1]["messages"]
    sent = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert sent == [c.call_id for c in calls]
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == sent


@pytest.mark.parametrize("full_history", [True, False], ids=["full-history", "previous-response-id"])
@pytest.mark.parametrize("ids", [["dup", "dup"], ["z" * 10_000, ""], ["call_ok", "call_\x07bell"]],
                         ids=["repeated", "long-and-empty", "plain-and-control"])
def test_client_function_calls_round_trip(rig: Rig, ids: list[str], full_history: bool) -> None:
    _client_round_trip(rig, ids, full_history=full_history)



def test_the_limits_are_checked_when_the_workspace_loads(tmp_path: Path) -> None:
    for key in ("max_hosted_calls_per_turn", "max_hosted_calls_per_response", "max_tool_arguments_chars"):
        with pytest.raises(ConfigError, match=rf"limits\.{key}"):
            parse_workspace(f"[limits]\n{key} = 0\n", source="w", base_dir=tmp_path)
    limits = parse_workspace("", source="w", base_dir=tmp_path).limits
    assert (limits.max_hosted_calls_per_turn, limits.max_hosted_calls_per_response,
            limits.max_tool_arguments_chars) == (32, 256, 65536)
