"""The seccomp program a sandbox worker runs under: the system calls that reach past its namespaces.

The namespaces are the boundary; this filter is the second line, and it shrinks the kernel surface
a function can touch. Refused with ``EPERM``: tracing and reading other processes, keyrings, BPF,
mounts and new or joined namespaces, performance counters, io_uring, userfaultfd, kernel modules and
the like; ``socket`` for any family but ``AF_UNIX`` unless the function is declared with
``network = true`` (then ``AF_INET`` and ``AF_INET6`` too). ``clone3`` answers ``ENOSYS`` (its flags
live in memory a filter cannot read), so the C library falls back to ``clone``, whose namespace
flags are refused. Another architecture's system calls (32-bit entry points) kill the process.

Built with libseccomp (``pyseccomp`` calls it through ctypes) once per process and handed to
bubblewrap as a BPF program (``--seccomp FD``).
"""

from __future__ import annotations

import errno
import functools
import socket
import tempfile

from opensupervisor.errors import ConfigError

REFUSED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "personality",
    "iopl", "ioperm", "lookup_dcookie", "fanotify_init", "vhangup", "settimeofday", "clock_settime",
    "adjtimex", "clock_adjtime", "nfsservctl", "uselib", "_sysctl",
)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
MAX_FAMILY = 64  # above AF_MAX (46 on Linux 6.x)
FAMILIES = {False: (socket.AF_UNIX,), True: (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)}


@functools.cache
def program(network: bool) -> bytes:
    """The BPF program (raises ``ConfigError`` when libseccomp cannot be loaded)."""
    try:
        import pyseccomp as sc  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:
        raise ConfigError(f"the sandbox needs libseccomp (Debian: libseccomp2) and pyseccomp: {exc}") from exc
    flt = sc.SyscallFilter(sc.ALLOW)
    refuse = sc.ERRNO(errno.EPERM)
    for name in REFUSED:
        try:
            flt.add_rule(refuse, name)
        except (OSError, ValueError, RuntimeError):  # not a system call on this architecture
            continue
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for bit in _bits(NAMESPACE_FLAGS):
        flt.add_rule(refuse, "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    # Every family but the allowed ones: the complement of a short list, not a list of bad ones.
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    for family in range(MAX_FAMILY):
        if family not in FAMILIES[network]:
            flt.add_rule(no_family, "socket", sc.Arg(0, sc.EQ, family))
    flt.add_rule(no_family, "socket", sc.Arg(0, sc.GE, MAX_FAMILY))
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(32) if mask & (1 << i)]
