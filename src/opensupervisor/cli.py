"""The ``opensupervisor`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from opensupervisor.cli_governance import grants, rate_limits
from opensupervisor.cli_identity import tokens, usage, users
from opensupervisor.cli_support import with_store
from opensupervisor.errors import ConfigError
from opensupervisor.settings import Settings, ensure_admin_token

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from opensupervisor.admin.connections import ConnectionAdmin
    from opensupervisor.admin.functions import FunctionAdmin
    from opensupervisor.knowledge.ingest import IngestReport
    from opensupervisor.store import Store
    from opensupervisor.workspace import Workspace

# Each command imports the parts it runs (tools, durable execution, knowledge) when it runs:
# a command that only writes the store starts in a fraction of the time.

T = TypeVar("T")
_consoles: list[Console] = []


def console() -> Console:
    """Where the commands tell a person what they did (stderr), made on first use."""
    if not _consoles:
        from rich.console import Console

        _consoles.append(Console(stderr=True))
    return _consoles[0]


def _workspace_and_store_url(settings: Settings) -> Workspace:
    """The workspace, after checking that the database URL is one the store can open."""
    from opensupervisor.engines import engine_url
    from opensupervisor.workspace import load_workspace

    try:
        workspace = load_workspace(settings.config)
        engine_url(settings.database_url)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    return workspace


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opensupervisor")
def main() -> None:
    """OpenSupervisor: a self-hosted Supervisor API (OpenAI Responses protocol with hosted tools)."""


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Workspace file (TOML). Default: $OPENSUPERVISOR_CONFIG, else the demo workspace.")
@click.option("--host", default=None, help="Address to listen on. Default: $OPENSUPERVISOR_HOST or 127.0.0.1.")
@click.option("--port", type=int, default=None, help="Port. Default: $OPENSUPERVISOR_PORT or 8000.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (use PostgreSQL when more than one).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(config: str | None, host: str | None, port: int | None, workers: int, log_level: str) -> None:
    """Start the HTTP server."""
    settings = Settings.from_env()
    settings = dataclasses.replace(settings, config=config or settings.config, host=host or settings.host,
                                   port=port or settings.port)
    workspace = _workspace_and_store_url(settings)
    token, generated = ensure_admin_token(settings)
    if generated:
        console().print(f"[bold]Admin token[/bold] (shown once, saved in {settings.data_dir}/admin_token): {token}",
                      soft_wrap=True)
    console().print(f"Workspace [bold]{workspace.name}[/bold]: {len(workspace.models)} models; "
                  f"state in {_without_password(settings.database_url)}")
    base = f"http://{settings.host}:{settings.port}"
    console().print(f"Listening on {base}  (Ctrl+C to stop)")
    console().print(f"Clients: DATABRICKS_HOST={base} DATABRICKS_TOKEN=<admin token>, or the OpenAI SDK with "
                  f"base_url={base}/v1", soft_wrap=True)
    # Worker processes rebuild the app from the environment, so pass the resolved settings on.
    os.environ.update({
        "OPENSUPERVISOR_HOST": settings.host, "OPENSUPERVISOR_PORT": str(settings.port),
        "OPENSUPERVISOR_DATABASE_URL": settings.database_url, "OPENSUPERVISOR_ADMIN_TOKEN": token,
        "OPENSUPERVISOR_DATA_DIR": str(settings.data_dir),
    })
    if settings.config:
        os.environ["OPENSUPERVISOR_CONFIG"] = settings.config
    from opensupervisor.server import serving

    serving.serve(settings, workspace, workers=workers, log_level=log_level)


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Workspace file (TOML). Default: $OPENSUPERVISOR_CONFIG, else the demo workspace.")
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=None,
              help="Background runs at once in this process. Default: the workspace's background.worker_concurrency.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def worker(config: str | None, concurrency: int | None, log_level: str) -> None:
    """Run background responses (no HTTP). Start any number beside the servers, on one PostgreSQL."""
    settings = Settings.from_env()
    settings = dataclasses.replace(settings, config=config or settings.config,
                                   worker_concurrency=concurrency or settings.worker_concurrency)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workspace = _workspace_and_store_url(settings)
    from opensupervisor.runtime import running

    console().print(f"Worker for workspace [bold]{workspace.name}[/bold]; state in "
                  f"{_without_password(settings.database_url)}  (Ctrl+C to stop)")

    async def work() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running(settings, workspace):
            # Printed once the store is migrated, the tools built and the queue polled: ready for runs.
            console().print(f"Worker ready: taking background runs, {settings.worker_concurrency} at a time")
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        try:
            _run(work())
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc


@main.group()
def functions() -> None:
    """Register catalog functions at run time (they join the workspace file's; servers pick them up)."""


@functions.command("add")
@click.argument("name")
@click.option("--python", "python_file", type=click.Path(exists=True, dir_okay=False),
              help="A Python source file defining the function (its last name part).")
@click.option("--sql", default=None, help="A SQL body with :named parameters.")
@click.option("--database-url", default=None, help="Where the SQL runs (sqlite:/// or postgresql://).")
@click.option("--param", "params", multiple=True, metavar="NAME:TYPE[:DESCRIPTION]",
              help="A SQL parameter (type: string, integer, number, boolean). Repeat for each.")
@click.option("--description", default=None)
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True)
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def functions_add(name: str, python_file: str | None, sql: str | None, database_url: str | None,
                  params: tuple[str, ...], description: str | None, timeout_s: float, config: str | None) -> None:
    """Register (or replace) function NAME, e.g. main.support.flag_urgent."""
    if (python_file is None) == (sql is None):
        raise click.UsageError("give either --python FILE or --sql BODY")
    fields: dict[str, Any] = {"language": "python" if python_file else "sql", "timeout_s": timeout_s}
    if description:
        fields["description"] = description
    if python_file:
        with open(python_file, encoding="utf-8") as f:
            fields["source_code"] = f.read()
    else:
        fields.update(sql=sql, parameters=[_param(p) for p in params])
        if database_url:
            fields["database_url"] = database_url
    given = _given(fields)
    registered = _functions_call(config, lambda admin: admin.put(name, given))
    console().print(f"Registered [bold]{name}[/bold] as tool {registered['tool_name']}")


@functions.command("list")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def functions_list(config: str | None) -> None:
    """Every function: name, language, origin (workspace or registered), description."""

    async def listing(admin: FunctionAdmin) -> list[dict[str, Any]]:
        await admin.reload()
        return admin.listing()

    for row in sorted(_functions_call(config, listing), key=lambda r: str(r["name"])):
        click.echo(f"{row['name']}\t{row['language']}\t{row['origin']}\t{row['description'] or ''}")


@functions.command("remove")
@click.argument("name")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def functions_remove(name: str, config: str | None) -> None:
    """Remove registered function NAME."""
    _functions_call(config, lambda admin: admin.remove(name))
    console().print(f"Removed {name}")


@main.group()
def connections() -> None:
    """Store connections to MCP servers (they join the workspace file's; servers pick them up).

    Secrets are read from standard input (never from the command line) and sealed with the
    server's key ($OPENSUPERVISOR_SECRET_KEY, else <data dir>/secret_key)."""


@connections.command("add")
@click.argument("name")
@click.option("--url", required=True, help="The MCP server's URL.")
@click.option("--transport", type=click.Choice(["auto", "streamable_http", "sse"]), default="auto", show_default=True)
@click.option("--bearer-token-env", default=None, help="Environment variable holding a bearer token.")
@click.option("--bearer-token-stdin", is_flag=True, help="Read a bearer token from standard input and store it.")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
              callback=lambda ctx, param, values: _headers(values), help="An extra header (stored sealed).")
@click.option("--oauth-token-url", default=None, help="OAuth client credentials: the token endpoint.")
@click.option("--oauth-client-id", default=None)
@click.option("--oauth-client-secret-env", default=None, help="Environment variable holding the client secret.")
@click.option("--oauth-client-secret-stdin", is_flag=True, help="Read the client secret from standard input.")
@click.option("--oauth-scope", default=None)
@click.option("--allowed-tool", "allowed", multiple=True, help="Offer only these tools. Repeat for each.")
@click.option("--require-approval", type=click.Choice(["background", "always", "never"]), default="background",
              show_default=True)
@click.option("--per-user", is_flag=True, help="On behalf of the user: each caller's own stored token.")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True)
@click.option("--description", default=None)
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def connections_add(name: str, url: str, transport: str, bearer_token_env: str | None, bearer_token_stdin: bool,
                    headers: dict[str, str], oauth_token_url: str | None, oauth_client_id: str | None,
                    oauth_client_secret_env: str | None, oauth_client_secret_stdin: bool, oauth_scope: str | None,
                    allowed: tuple[str, ...], require_approval: str, per_user: bool, timeout_s: float,
                    description: str | None, config: str | None) -> None:
    """Store (or replace) connection NAME."""
    if bearer_token_stdin and oauth_client_secret_stdin:
        raise click.UsageError("only one secret can come from standard input")
    secret = _read_secret() if bearer_token_stdin or oauth_client_secret_stdin else None
    fields: dict[str, Any] = {"url": url, "transport": transport, "require_approval": require_approval,
                              "timeout_s": timeout_s, "headers": headers, "per_user": per_user}
    fields.update({k: v for k, v in (("bearer_token_env", bearer_token_env), ("description", description)) if v})
    if bearer_token_stdin:
        fields["bearer_token"] = secret
    if allowed:
        fields["allowed_tools"] = list(allowed)
    oauth = {"token_url": oauth_token_url, "client_id": oauth_client_id, "scope": oauth_scope,
             "client_secret_env": oauth_client_secret_env,
             "client_secret": secret if oauth_client_secret_stdin else None}
    if any(oauth.values()):
        fields["oauth"] = {k: v for k, v in oauth.items() if v is not None}
    given = _given(fields)
    _connections_call(config, lambda admin: admin.put(name, given))
    console().print(f"Stored connection [bold]{name}[/bold]")


@connections.command("list")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def connections_list(config: str | None) -> None:
    """Every connection (the workspace file's and the stored ones), without secrets."""

    async def listing(admin: ConnectionAdmin) -> list[dict[str, Any]]:
        return admin.listing()

    for row in _connections_call(config, listing):
        click.echo(f"{row['name']}\t{row['origin']}\t{row['url']}\t{row['auth']}")


@connections.command("remove")
@click.argument("name")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def connections_remove(name: str, config: str | None) -> None:
    """Remove stored connection NAME, and every user's credential for it."""
    _connections_call(config, lambda admin: admin.remove(name))
    console().print(f"Removed {name}")


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` without the options left at their default: the admin service applies its own (the
    same as ``--help`` shows)."""
    ctx = click.get_current_context()
    return {k: v for k, v in fields.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}


def _read_secret() -> str:
    return sys.stdin.readline().strip()


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    pairs = [v.partition("=") for v in values]
    bad = [v for v, (_, sep, _) in zip(values, pairs, strict=True) if not sep]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not NAME=VALUE", param_hint="--header")
    return {key: value for key, _, value in pairs}


@main.command()
@click.argument("assistants", nargs=-1)
@click.option("--path", "paths", multiple=True, help="Only these files or folders (inside the sources).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Workspace file.")
def ingest(assistants: tuple[str, ...], paths: tuple[str, ...], config: str | None) -> None:
    """Index knowledge assistants' source folders (all of them, or the ASSISTANTS named).

    Incremental: unchanged files are skipped, changed ones replaced, deleted ones removed."""
    from rich.progress import Progress

    from opensupervisor.admin.knowledge import KnowledgeAdmin
    from opensupervisor.knowledge.ingest import OutsideSources
    from opensupervisor.knowledge.ingest import ingest as knowledge_ingest
    from opensupervisor.models.catalog import ModelCatalog
    from opensupervisor.tools.knowledge_assistant import KnowledgeAssistants
    from opensupervisor.workspace import load_workspace

    settings = Settings.from_env()

    async def run() -> list[tuple[str, IngestReport]]:
        ws = load_workspace(config or settings.config)
        catalog = ModelCatalog(ws)
        kas = KnowledgeAssistants(ws, catalog, settings.knowledge_database_url)
        reports = []
        try:
            for ka in KnowledgeAdmin(kas).selection(assistants):
                with Progress(console=console(), transient=True) as bar:
                    task = bar.add_task(ka, total=None)

                    def step(key: str, n: int, total: int, task: TaskID = task, bar: Progress = bar,
                             ka: str = ka) -> None:
                        bar.update(task, completed=n, total=total, description=f"{ka}: {key}")

                    reports.append((ka, await knowledge_ingest(kas.index, ka, kas.roots[ka], kas.embedder(ka),
                                                               only=list(paths) or None, progress=step)))
        finally:
            await kas.aclose()
            await catalog.aclose()
        return reports

    try:
        results = asyncio.run(run())
    except (ConfigError, OutsideSources) as exc:
        raise click.ClickException(str(exc)) from exc
    for ka, report in results:
        console().print(f"[bold]{ka}[/bold]: {len(report.added)} added, {len(report.updated)} updated, "
                      f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, {report.chunks} chunks")
        for key, why in report.failed.items():
            console().print(f"  [yellow]skipped[/yellow] {key}: {why}")
        for key in report.refused:
            console().print(f"  [red]refused[/red] {key}: outside the source folders")


@main.command("secret-key")
def secret_key() -> None:
    """Print a new key for $OPENSUPERVISOR_SECRET_KEY (share one across the hosts of a deployment)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


def _connections_call(config: str | None, action: Callable[[ConnectionAdmin], Awaitable[T]]) -> T:
    """Run ``action`` with the workspace's connections and the stored ones, as a server holds them."""
    from opensupervisor.admin.connections import ConnectionAdmin
    from opensupervisor.store.connections import StoredConnections
    from opensupervisor.store.credentials import UserCredentials
    from opensupervisor.tools.connections import Connections
    from opensupervisor.vault import Vault
    from opensupervisor.workspace import load_workspace

    async def run(store: Store, settings: Settings) -> T:
        vault = Vault.load(settings.data_dir)
        admin = ConnectionAdmin(Connections(load_workspace(config or settings.config)),
                                StoredConnections(store, vault), UserCredentials(store, vault))
        await admin.reload()
        return await action(admin)

    return with_store(run)


def _param(text: str) -> dict[str, Any]:
    name, _, rest = text.partition(":")
    kind, _, description = rest.partition(":")
    return {"name": name, "type": kind or "string", **({"description": description} if description else {})}


def _functions_call(config: str | None, action: Callable[[FunctionAdmin], Awaitable[T]]) -> T:
    """Run ``action`` with the workspace's function catalog and the store's registered functions."""
    from opensupervisor.admin.functions import FunctionAdmin
    from opensupervisor.store.functions import RegisteredFunctions
    from opensupervisor.tools.sandbox import Sandbox
    from opensupervisor.tools.uc_functions import FunctionCatalog
    from opensupervisor.workspace import load_workspace

    async def run(store: Store, settings: Settings) -> T:
        workspace = load_workspace(config or settings.config)
        catalog = FunctionCatalog(workspace, Sandbox.from_section(workspace.sandbox), settings.data_dir / "functions")
        try:
            return await action(FunctionAdmin(catalog, RegisteredFunctions(store)))
        finally:
            await catalog.aclose()

    return with_store(run)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it exists (as uvicorn does for ``serve``): less overhead per I/O hop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


main.add_command(users)
main.add_command(tokens)
main.add_command(usage)
main.add_command(grants)
main.add_command(rate_limits)
