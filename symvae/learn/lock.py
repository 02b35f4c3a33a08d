"""One run per output: an advisory lock that the operating system drops when its process ends.

A run holds `LOCK` (a small file beside its outputs holding its PID) for as
long as it writes them; a second run on the same outputs is refused with that
PID. The lock is `flock`, so a crash or `kill -9` releases it with the process
and no stale lock is ever left to clear by hand.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Busy(RuntimeError):
    """Another live process holds the lock; `pid` is its process id (or None if unknown)."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is held by process {pid}")
        self.path, self.pid = path, pid


class RunLock:
    """An exclusive, non-blocking lock on `path`; released (and the file removed) by release()."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise Busy; OSError when the folder cannot hold the lock file."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise Busy(self.path, pid) from None
            # the holder before us may have removed the file after we opened it: then our lock is
            # on a file nobody else sees, so open the current one again
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass  # the lock still ends with the descriptor
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
