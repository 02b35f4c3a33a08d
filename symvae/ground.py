"""The ground floor: what every wing of the library may import, importing none of them.

File helpers (atomic writes, digests), the repository's root, and the errors that several
wings raise or catch. Free of torch, so that the tools which do not train start fast.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message that names it and the fix."""


class FetchError(RuntimeError):
    """A fetch could not produce verified files; the message says what and how to fix it."""


def atomic_write(path: Path, write) -> None:
    """Write through `write(file)` into a temporary file beside `path`, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # name the file the user knows, not the temporary one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_all(files: dict[Path, bytes]) -> None:
    """Write files that belong together (e.g. a results table and its JSON): every temporary
    file is written and flushed before the first rename, so a failure to write (a full disk)
    leaves all of them as they were, not one new and one old."""
    temporaries: dict[Path, Path] = {}
    path = next(iter(files))
    try:
        for path, data in files.items():
            tmp = temporaries[path] = path.with_name(f".{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    except OSError as err:  # name the file the user knows, not the temporary one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        for tmp in temporaries.values():
            if tmp.exists():
                tmp.unlink()


def md5_file(path: Path) -> str:
    """Hex MD5 of a file."""
    return digest_file(path, "md5")


def digest_file(path: Path, algorithm: str) -> str:
    """Hex digest of a file by a hashlib algorithm, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
