"""What the private Dovecot and Postfix fixtures (dovecot.py, postfix.py)
share: the reaper that runs a mail daemon's master in a process group of its
own, tied to the test process's life, and the helpers that stop it, find
what is left of its group, and keep its files for inspection.
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The parent of a daemon's master: a child subreaper (the master's children
# may outlive it briefly; they are reaped here instead of lingering under
# init), and the link to our life time: it gets SIGTERM when the test process
# dies (PR_SET_PDEATHSIG) and then stops the master. The master runs in a
# session (and process group) of its own, so all of the daemon is one group.
# It exits when all of the daemon is gone.
# argv: group|master PARENT_PID PROGRAM ARGS... ("group": SIGTERM goes to
# the master's whole group as well as to the master).
REAPER = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)                      # PR_SET_CHILD_SUBREAPER
libc.prctl(1, signal.SIGTERM, 0, 0, 0)          # PR_SET_PDEATHSIG
master = 0
GROUP = sys.argv.pop(1) == "group"
stopping = False
def terminate(sig, frame):
    global stopping
    stopping = True
    if master:
        # SIGTERM to the master; with "group", to its whole group at once
        # too (Dovecot's master alone takes ~1 s to stop its services).
        targets = [(os.kill, master)] + ([(os.killpg, master)] if GROUP else [])
        for kill, target in targets:
            try:
                kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, terminate)
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)                                # the test process is already gone
master = os.fork()
if master == 0:
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
if stopping:
    terminate(None, None)
status, kill_at = 0, None
while True:
    try:
        pid, st = os.waitpid(-1, os.WNOHANG if kill_at else 0)
    except ChildProcessError:
        break
    if pid == master:
        status = os.waitstatus_to_exitcode(st)
        kill_at = time.monotonic() + 2.0        # leftovers get 2 s, then SIGKILL
        try:
            os.killpg(master, signal.SIGTERM)
        except ProcessLookupError:
            pass
    elif pid == 0:
        if time.monotonic() > kill_at:
            try:
                os.killpg(master, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
sys.exit(status if status > 0 else 0 if stopping else 1)
"""


def reaper_argv(signal_group, program_argv):
    """The command that runs program_argv under REAPER."""
    return [sys.executable, "-c", REAPER, "group" if signal_group else "master",
            str(os.getpid()), *program_argv]


def searchable_temp_root(error) -> Path:
    """A temp directory that unprivileged users can traverse: $TMPDIR if every
    ancestor has o+x, else /tmp. Raises `error` when neither will do."""
    for candidate in (Path(tempfile.gettempdir()).resolve(), Path("/tmp")):
        if all(p.stat().st_mode & stat.S_IXOTH for p in [candidate, *candidate.parents]):
            return candidate
    raise error("no temp directory that others may traverse (need /tmp with o+x)")


def group_members(pgid):
    """PIDs of the live (non-zombie) processes in process group pgid (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state ppid pgrp ...
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def stop_supervised(proc, master_pgid, timeout, error, name):
    """Stops a daemon run under REAPER: SIGTERM to the reaper (which passes it
    on), then SIGKILL to whatever is left of the master's process group,
    which master_pgid() names (or None). Raises `error` if processes survive."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    pgid = master_pgid()
    if pgid:
        deadline = time.monotonic() + timeout
        while left := group_members(pgid):
            if time.monotonic() > deadline:
                raise error(f"{name} processes {left} survived SIGKILL")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)


def keep_for_inspection(directory: Path, path: Path):
    """Moves a stopped daemon's directory to `path` (replacing the symlink
    there), beside the test's other temp files. Returns the new directory."""
    if path.is_symlink():
        path.unlink()
    try:
        os.rename(directory, path)
    except OSError:     # another file system: copy what can be copied
        shutil.copytree(directory, path, symlinks=True,
                        ignore=lambda d, names: [n for n in names if not (
                            os.path.isdir(os.path.join(d, n))
                            or os.path.isfile(os.path.join(d, n)))])
        shutil.rmtree(directory)
    return path


def close_every(instances, error):
    """Closes each instance; raises the first `error` any of them raised."""
    errors = []
    for instance in instances:
        try:
            instance.close()
        except error as e:
            errors.append(e)
    if errors:
        raise errors[0]


def close_at_exit(instances):
    """An atexit hook closing what a fixture never tore down."""
    for instance in list(instances):
        try:
            instance.close()
        except Exception:
            pass
