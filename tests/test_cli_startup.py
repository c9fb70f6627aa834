"""The command line starts quickly: its entry point imports none of the heavy parts a command may
need (the store, durable execution, models, rich output) until a command runs."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "dbos", "llama_cpp", "rich", "pydantic", "opensupervisor.store.store",
         "opensupervisor.runtime", "opensupervisor.server.app", "opensupervisor.workspace", "cryptography")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_command_line_loads_nothing_heavy() -> None:
    loaded = _loaded_after("import opensupervisor.cli")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}


def test_help_loads_nothing_heavy_and_lists_every_command() -> None:
    code = ("from click.testing import CliRunner\nfrom opensupervisor.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "assert all(c in r.output for c in ('serve', 'worker', 'users', 'tokens', 'usage', 'grants', "
            "'rate-limits', 'functions', 'connections', 'ingest'))")
    loaded = _loaded_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}
