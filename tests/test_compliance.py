"""The public Open Responses compliance suite (``llm-comply``) against the live server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server


def llm_comply() -> str:
    found = shutil.which("llm-comply") or str(Path(sys.executable).with_name("llm-comply"))
    assert Path(found).exists(), "llm-comply is not installed (it is a dev dependency)"
    return found


def test_open_responses_compliance_suite_passes(server: Server) -> None:
    # A reasoning-model name makes the suite run its reasoning test as well instead of skipping it.
    done = subprocess.run(
        [llm_comply(), "run", "-u", server.v1, "-k", server.token, "-m", "gpt-5-scripted", "--json",
         "--timeout", "60"],
        capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(done.stdout)
    failures = [(r["id"], r.get("errors")) for r in report["results"] if r["status"] != "passed"]
    assert failures == []
    assert report["summary"] == {"total": 13, "passed": 13, "failed": 0, "skipped": 0}
    assert done.returncode == 0
