"""The last line of defence of every command: an exception nobody foresaw.

Every refusal and every expected failure has its own one-line message and exit status
(symvae.cli.fail). What is left, a bug or a fault no check was written for, must still end
as one line, not a traceback: `error: unexpected TYPE: MESSAGE; details in FILE` and exit
status UNEXPECTED, with the traceback in FILE. Commands write their outputs atomically or
through their own handlers, so the files a run wrote before are left as they were.

Free of torch on purpose: symvae.evaluate.plot runs in notebooks without it.
"""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

# sysexits.h's EX_SOFTWARE, "an internal software error": apart from 1-4, 130 and 143
UNEXPECTED = 70

_details: dict[str, object] = {}


def details_beside(folder: Path, stem: str) -> None:
    """Write the traceback of an unexpected failure into FOLDER (the run's log folder, when it
    exists by then) as STEM-TIME.txt, instead of the temporary folder."""
    _details.update(folder=Path(folder), stem=stem)


def guarded(command: Callable[[], int], tool: str) -> int:
    """Run a command's body; Ctrl-C that it does not handle ends it with one line and 130, an
    unforeseen exception with one line and UNEXPECTED. SystemExit (refusals) passes through.
    A command run inside another (reproduce's stages) keeps the outer one's details place."""
    outer = dict(_details)
    _details.clear()
    _details.update(stem=f"symvae-{tool}")
    try:
        return command()
    except KeyboardInterrupt:
        print("SIGINT: stopped; files written before are complete (each is replaced whole)",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the point of this function
        return unexpected(err)
    finally:
        _details.clear()
        _details.update(outer)


def entry_point(tool: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's main() with `guarded`."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            return guarded(lambda: main(*args, **kwargs), tool)
        return run
    return wrap


def unexpected(err: BaseException) -> int:
    """Say one line naming the exception and the file that holds its traceback."""
    words = (str(err).strip().splitlines() or [""])[0][:200]
    what = f"{type(err).__name__}: {words}" if words else type(err).__name__
    details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        path = _write_details(details)
    except OSError as write_err:  # last resort: the traceback on stderr, after the line
        print(f"error: unexpected {what}; the details could not be written "
              f"({write_err.strerror or write_err}) and follow", file=sys.stderr)
        print(details, file=sys.stderr, end="")
        return UNEXPECTED
    print(f"error: unexpected {what}; details in {path} (please report it with that file)",
          file=sys.stderr)
    return UNEXPECTED


def _write_details(details: str) -> Path:
    """The traceback in the command's folder for it, else in the temporary folder."""
    folder = _details.get("folder")
    if isinstance(folder, Path) and folder.is_dir():
        try:
            return _write_in(folder, details)
        except OSError:
            pass
    return _write_in(Path(tempfile.gettempdir()), details)


def _write_in(folder: Path, details: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = folder / f"{_details['stem']}-{stamp}-{os.getpid()}.txt"
    try:
        cwd = os.getcwd()
    except OSError:  # the folder itself was removed
        cwd = "unknown"
    header = (f"command: {' '.join(sys.argv)}\ncwd: {cwd}\n"
              f"python: {sys.version.split()[0]}\ntime: {stamp} UTC\n\n")
    with open(path, "x", encoding="utf-8") as f:  # never over an earlier file
        f.write(header + details)
    return path.resolve()


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args(argv), but a flag argparse cannot take is one `error:` line naming it
    (and exit 2), not a usage block."""
    def error(message: str) -> NoReturn:
        print(f"error: {message}; see {parser.prog} --help", file=sys.stderr)
        raise SystemExit(2)
    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


# what to do about a failed write, by its cause (errno)
_WRITE_FIXES = {
    errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
    errno.EFBIG: "free space or write elsewhere", errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions", errno.EROFS: "write to a file system that is writable",
    errno.EISDIR: "move away the folder that stands there",
    errno.ENOTDIR: "move away the file that stands where a folder goes",
    errno.ENOTEMPTY: "move away the folder that stands there",
    errno.EEXIST: "move away what stands there", errno.ENAMETOOLONG: "use a shorter name",
}


def cannot_write(err: OSError, what: str = "a file") -> str:
    """`cannot write FILE (REASON); FIX` for a failed write: the fix names the real obstacle
    (a full disk, permissions, a folder in the way), not a guess."""
    fix = _WRITE_FIXES.get(err.errno, "fix what stands in the way")
    return f"cannot write {err.filename or what} ({err.strerror or err}); {fix}"
