"""One ``cbir index`` per collection at a time: ``results/<name>/index.lock`` names the run that holds it.

The run holds the file with flock(2) for as long as it lives and writes into it who it is (PID, host, start,
command). The kernel releases the lock when the process ends, however it ends (SIGKILL, power cut), so a lock left
by a killed run is taken over by the next run, with a message; a second run while the first lives is refused at
once, naming it. Where the file system has no flock (some network ones), a lock whose PID no longer runs on this
host is taken over instead. Runs on different collections take different locks and run side by side.

The file is emptied only when a run finishes; one that failed or was killed stays named in it, so that ``cbir
serve`` does not take a collection's cells for finished until a run has finished (``cbir.serve.reload``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class CollectionBusyError(RuntimeError):
    """Another run holds the collection's lock; the message names it and says how to clear a stale lock."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a lock: enough to find the process and to tell a stale lock."""

    pid: int
    host: str
    started: str
    command: str
    failed: str = ""  # how the run ended where it did not finish: the lock then stays, naming it

    @classmethod
    def this_process(cls) -> LockHolder:
        command = " ".join(shlex.quote(arg) for arg in ["cbir", *sys.argv[1:]])
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"), command)

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started}: {self.command}"

    def is_alive(self) -> bool:
        """Whether the process runs; one on another host is taken to run (it cannot be checked from here)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True


def read_holder(path: str | os.PathLike[str]) -> LockHolder | None:
    """The run named in a lock file (None: free, or unreadable); it may be gone (:meth:`LockHolder.is_alive`)."""
    try:
        return _parse(Path(path).read_text())
    except OSError:
        return None


def _parse(text: str) -> LockHolder | None:
    try:
        payload = json.loads(text)
        fields = (int(payload["pid"]), str(payload["host"]), str(payload["started"]), str(payload["command"]))
        return LockHolder(*fields, str(payload.get("failed", "")))
    except (ValueError, KeyError, TypeError):
        return None


def _read(fd: int) -> LockHolder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    return _parse(os.read(fd, 65536).decode(errors="replace"))


def _write(fd: int, holder: LockHolder | None) -> None:
    os.ftruncate(fd, 0)
    if holder is not None:
        os.pwrite(fd, (json.dumps(asdict(holder)) + "\n").encode(), 0)
    os.fsync(fd)


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in NO_FLOCK:
            return None
        raise
    return True


def busy_message(what: str, path: Path, holder: LockHolder | None) -> str:
    who = holder.describe() if holder else "a process that did not say who it is"
    stop = f"kill {holder.pid}" if holder else "stop it"
    return (
        f"{what} is being indexed by another run ({who}); wait for it to finish or stop it ({stop}). "
        f"A lock left by a run that was killed is taken over by the next run; if that process is gone and the "
        f"lock stays (a network file system without locks, another host), delete {path}"
    )


@contextlib.contextmanager
def collection_lock(path: str | os.PathLike[str], what: str, notify: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock file ``path`` of the collection ``what`` for the block; a :class:`CollectionBusyError` at once
    where another live run holds it. ``notify`` gets one line when a stale lock is taken over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the jobs the run starts
    try:
        locked = _try_flock(fd)
        previous = _read(fd)
        if locked is False or (locked is None and previous is not None and not previous.failed and previous.is_alive()):
            raise CollectionBusyError(busy_message(what, path, previous))
        if previous is not None and not previous.failed and previous.pid != os.getpid():
            notify(f"took over the lock of {what} ({path}) left by a run that no longer runs ({previous.describe()})")
        holder = LockHolder.this_process()
        _write(fd, holder)
        try:
            yield
        except BaseException as error:
            _write(fd, replace(holder, failed=type(error).__name__))  # unfinished: `cbir serve` does not reload
            raise
        _write(fd, None)  # an empty lock file names no one: the last run finished
    finally:
        os.close(fd)  # and the kernel releases the flock
