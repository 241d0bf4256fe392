"""The sandbox's launcher, run as a script (`python -I jail.py SETTINGS_JSON`), standard library only.

It is a separate program, not an import, because it does what must happen between fork and exec
(namespaces, mounts, limits, dropping root) in a fresh single-threaded process. With
`namespaces` it enters new mount, network and PID namespaces; its child, process 1 of the new
PID namespace, turns every mount read-only except a fresh size-limited tmpfs at the working
directory, switches to an unprivileged uid, sets the resource limits and execs Python on the
program. The launcher kills that child at the wall-time limit, which ends the whole PID namespace
(everything the program forked). Its exit status: the program's, 128+N for signal N, 124 for a
timeout, 125 when the sandbox itself could not be set up.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
from typing import Any

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
_FLAG_OF_OPTION = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

# Runs in the sandboxed interpreter before the program: socket creation and name lookups raise.
# A second barrier beside the network namespace, and the only one where namespaces are unavailable.
NO_NETWORK_PRELUDE = """
import sys
def _no_network(event, args):
    if event.startswith("socket."):
        raise PermissionError("network access is disabled in the sandbox")
sys.addaudithook(_no_network)
del _no_network
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def _mount_points() -> list[tuple[str, int]]:
    """Every mount point of this namespace, with the flags a read-only remount must keep."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")  # \040 for spaces, as the kernel writes it
            keep = sum(flag for option, flag in _FLAG_OF_OPTION.items() if option in fields[5].split(","))
            points.append((target, keep))
    return points


def _lock_filesystem(workdir: str, disk_bytes: int, uid: int) -> None:
    """All mounts read-only (in this namespace only), the working directory a fresh tmpfs."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    for target, keep in _mount_points():
        try:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
        except OSError:
            if target in ("/", "/tmp", "/dev/shm", "/var/tmp"):
                raise
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_bytes},mode=0700,uid={uid},gid={uid}")


def _limit(settings: dict[str, Any]) -> None:
    for name, value in (
        ("RLIMIT_AS", settings["memory_bytes"]),
        ("RLIMIT_FSIZE", settings["file_bytes"]),
        ("RLIMIT_NPROC", settings["processes"]),
        ("RLIMIT_CPU", settings["cpu_seconds"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def _become_program(settings: dict[str, Any]) -> None:
    """In the child: isolate, drop privileges, limit, then exec Python on the program (never returns)."""
    uid = settings["uid"]
    if settings["namespaces"]:
        _lock_filesystem(settings["workdir"], settings["disk_bytes"], uid)
    else:
        os.setpgid(0, 0)  # no PID namespace: a process group of its own is what the launcher kills
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # after setuid, which clears it: die with the launcher, and the PID namespace with us
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    os.chdir(settings["workdir"])
    _limit(settings)
    python = settings["python"]
    args = [python, "-I", "-c", NO_NETWORK_PRELUDE, settings["program"]]
    os.execve(python, args, settings["env"])


def main() -> int:
    settings = json.loads(sys.argv[1])
    try:
        if settings["namespaces"]:
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    except OSError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 125
    pid = os.fork()
    if pid == 0:
        try:
            _become_program(settings)
        except BaseException as exc:
            print(f"sandbox: {exc}", file=sys.stderr)
        os._exit(125)
    deadline = time.monotonic() + settings["wall_seconds"]
    code = 124
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
            break
        time.sleep(0.01)
    # process 1 of the PID namespace takes everything it forked with it; without namespaces the
    # program's process group goes (a process that left the group is stopped by RLIMIT_CPU)
    try:
        if not settings["namespaces"]:
            os.killpg(pid, signal.SIGKILL)  # leftovers too, once the program has exited
        elif code == 124:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if code == 124:
        os.waitpid(pid, 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
