"""What the server writes for its own state (the store, DBOS's database, trace and inference tables,
the key and token files, SQLite's side files) is readable by its user only: files 0600, the folders
it creates 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx

from tests.conftest import WORKSPACE, ProcessServer, Server, wait_until

EXTRA = '''
[inference_table]
catalog_name = "main"
schema_name = "logs"
table_name_prefix = "agent"
'''


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(paths: list[Path]) -> dict[Path, int]:
    """Each path's mode. A side file SQLite removed between the listing and the look (the trace
    table's -journal, once its background write commits) is left out: there is nothing to check."""
    found: dict[Path, int] = {}
    for path in paths:
        try:
            found[path] = mode(path)
        except FileNotFoundError:
            if not path.name.endswith(("-journal", "-wal", "-shm")):
                raise
    return found


def exercise(server: Server, token: str, data: Path) -> None:
    """A plain, a traced and a background response: every kind of file gets written."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        assert http.post("/v1/responses", json={"model": "test-model", "input": "hi"}).status_code == 200
        traced = {"model": "test-model", "input": "hi", "trace_destination": {"catalog_name": "main",
                                                                             "schema_name": "traces"}}
        assert http.post("/v1/responses", json=traced).status_code == 200
        queued = http.post("/v1/responses", json={"model": "test-model", "input": "hi", "background": True}).json()
        wait_until(lambda: http.get(f"/v1/responses/{queued['id']}").json()["status"] == "completed",
                   what="the background response")
    wait_until(lambda: any((data / "traces").glob("*.db")) and any((data / "tables").glob("*.db")),
               what="the trace and inference tables")


def test_state_files_are_private(tmp_path: Path) -> None:
    config = tmp_path / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + EXTRA)
    data = tmp_path / ".opensupervisor"
    # No admin token given: the server makes one and saves it under the data folder.
    with ProcessServer(tmp_path, config=config, env={"OPENSUPERVISOR_ADMIN_TOKEN": ""}) as server:
        token = (data / "admin_token").read_text().strip()
        exercise(server, token, data)
        files = [p for p in data.rglob("*") if p.is_file()]
        folders = [data, *(p for p in data.rglob("*") if p.is_dir())]
        names = {p.name for p in files}
        # Each kind is there, while the server runs (SQLite's -wal and -shm files exist only then; the
        # trace table is written in the background, so its side file may still be a -journal).
        for expected in ("opensupervisor.db", "opensupervisor.db-wal", "opensupervisor.dbos.db",
                         "opensupervisor.dbos.db-wal", "secret_key", "admin_token", "main.traces.db",
                         "main.logs.db"):
            assert expected in names, sorted(names)
        assert {"traces", "tables"} <= {p.name for p in folders}
        open_files = {str(p.relative_to(tmp_path)): oct(m) for p, m in modes(files).items() if m != 0o600}
        open_folders = {str(p.relative_to(tmp_path)): oct(m) for p, m in modes(folders).items() if m != 0o700}
        assert open_files == {} and open_folders == {}


def test_existing_folders_keep_their_mode(tmp_path: Path) -> None:
    """A data folder made by the operator is theirs: only what the server creates in it is private."""
    data = tmp_path / "state"
    data.mkdir(mode=0o750)
    os.chmod(data, 0o750)
    config = tmp_path / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + EXTRA)
    with ProcessServer(tmp_path, config=config, env={"OPENSUPERVISOR_DATA_DIR": str(data)}) as server:
        exercise(server, server.token, data)
        assert mode(data) == 0o750
        assert mode(data / "opensupervisor.db") == 0o600 and mode(data / "traces") == 0o700
        assert mode(data / "secret_key") == 0o600 and mode(data / "traces" / "main.traces.db") == 0o600
