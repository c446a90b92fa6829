"""Files: the image names geohf reads, atomic writes (a temporary file in the same folder, then a rename), and
one writer per output (a lock file beside it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL file and the pid check alone
    fcntl = None

TMP_SUFFIX = ".tmp"
HEIF_SUFFIXES = (".heic", ".heif", ".hif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", *HEIF_SUFFIXES)


def temp_path(path: Path) -> Path:
    """A unique hidden temporary name beside ``path`` (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def remove_temp_files(folder: Path) -> int:
    """Delete temporary files left by a killed writer; returns how many."""
    stale = list(folder.glob(f".*{TMP_SUFFIX}")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


# ---------------------------------------------------------------- one writer per output

LOCK_SUFFIX = ".lock"
FRESH_S = 2.0  # an empty lock file younger than this is being filled by its writer, not left by a killed one


class OutputBusy(UserError):
    """Another process is writing the output (its lock file names it)."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds an output's lock: a process (``pid``, its ``started`` time on ``host``) running ``what``."""

    pid: int
    host: str
    what: str
    started: str | None = None  # the process's start time (/proc/<pid>/stat): a reused pid is another process

    @classmethod
    def current(cls, what: str) -> LockOwner:
        return cls(os.getpid(), socket.gethostname(), what, _start_time(os.getpid()))

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        """The owner a lock file names, or ``None`` for an empty or damaged file (a writer killed at its start)."""
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data.get("what", "")), data.get("started"))
        except (ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool | None:
        """Whether the process still runs: ``None`` when it runs on another host (it cannot be told from here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            pass
        started = _start_time(self.pid)
        return self.started is None or started is None or started == self.started

    def __str__(self) -> str:
        return f"{self.what or 'a process'} (pid {self.pid} on {self.host})"


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks after boot (Linux), with the pid: one process for good."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output (a file or a folder): hidden, beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def _try_lock(fd: int, wait_s: float = 0.0) -> bool:
    """An exclusive ``flock``, waiting up to ``wait_s`` for it: released by the kernel when its process dies."""
    if fcntl is None:
        return True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _read_owner(lock: Path, wait_s: float = 0.0) -> LockOwner | None:
    """The owner named in ``lock``, waiting up to ``wait_s`` for a writer that has just created it to fill it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            owner = LockOwner.parse(lock.read_text(encoding="utf-8"))
        except OSError:
            owner = None
        if owner is not None or time.monotonic() >= deadline:
            return owner
        time.sleep(0.05)


def _busy(path: Path, lock: Path, owner: LockOwner | None) -> OutputBusy:
    who = str(owner) if owner is not None else "another process"
    return OutputBusy(
        f"{path}: {who} is writing this output; wait for it to finish, or delete {lock} if that process is gone"
    )


def _acquire(path: Path, lock: Path, me: LockOwner) -> int:
    """Create (``O_EXCL``) or take over ``lock`` and hold it; a stale lock (its process gone) is taken over."""
    for _ in range(500):
        created = True
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            created = False
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:  # released meanwhile
                continue
        try:
            # our new file may be flocked for a moment by a writer that found it empty (and lets it go)
            if not _try_lock(fd, wait_s=0.5 if created else 0.0):
                raise _busy(path, lock, _read_owner(lock, wait_s=1.0))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if not same:  # the holder released it between our open and our lock: start again
                os.close(fd)
                continue
            if not created:
                owner = _read_owner(lock)
                if owner is None and time.time() - os.fstat(fd).st_mtime < FRESH_S:  # its writer is filling it
                    os.close(fd)
                    time.sleep(0.02)
                    continue
                if owner is not None and owner.alive() is not False:
                    raise _busy(path, lock, owner)
                gone = f"{owner}, which is gone" if owner is not None else "a writer killed as it started"
                print(f"note: {path}: taking over the lock of {gone} ({lock})", file=sys.stderr)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(asdict(me)).encode("utf-8"))
            os.fsync(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise _busy(path, lock, _read_owner(lock))


def remove_partial(path: str | os.PathLike) -> int:
    """Delete the temporary files and folders (:func:`temp_path`) a killed writer of ``path`` left; how many."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}")) if path.parent.is_dir() else []
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


@contextmanager
def exclusive_output(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the writer's lock of output ``path`` (a file or a folder) for the block: one writer at a time.

    The lock is a hidden file beside the output, created with ``O_EXCL`` and ``flock``-ed, naming ``what``
    writes it (``geohf predict``), its pid and host. A second writer is refused with an :class:`OutputBusy`
    (one line naming the output and the owner's pid); a lock whose process is gone (killed on this host) is
    taken over with a note on stderr, and what that writer left half-written (:func:`remove_partial`) goes.
    Folders made for the lock are removed again if nothing was written into them.
    """
    path = Path(path)
    lock = lock_path(path)
    made = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, lock, LockOwner.current(what))
        try:
            remove_partial(path)
            yield path
        finally:
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    lock.unlink()
            except FileNotFoundError:
                pass
            os.close(fd)
    finally:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
