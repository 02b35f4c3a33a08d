"""Shared fixtures: small synthetic IDX data sets and running an experiment's scripts."""
from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
RAW_DIRS = {"mnist": "MNIST", "fmnist": "FashionMNIST"}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file (uint8 data) as torchvision's loaders read it."""
    magic = 0x0800 + array.ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def synthetic_images(n: int, seed: int) -> np.ndarray:
    """Blobs of bright pixels on black, so thresholds and grey levels both matter."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for img in images:
        r, c = rng.integers(4, 20, size=2)
        img[r:r + 8, c:c + 6] = rng.integers(100, 256)
    return images


def write_dataset(root: Path, name: str, n_train: int = 96, n_test: int = 32) -> Path:
    raw = root / RAW_DIRS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", synthetic_images(n, seed))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    write_checksums(raw)
    return root


def write_checksums(raw: Path) -> None:
    """raw/MD5SUMS for the IDX files there: data that are not the official files."""
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"
             for p in sorted(raw.glob("*-ubyte"))]
    (raw / "MD5SUMS").write_text("".join(lines))


@pytest.fixture(autouse=True)
def signal_handlers_put_back():
    """Each test leaves SIGINT and SIGTERM as it found them. Commands run in-process change
    them; an ignored SIGINT left behind would be inherited by every process a later test
    starts (a Ctrl-C test would then wait forever)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root with small synthetic MNIST and Fashion-MNIST (128 images each)."""
    root = tmp_path / "data"
    for name in RAW_DIRS:
        write_dataset(root, name)
    return root


def run_script(folder: Path, script: str, *args: str, check: bool = True,
               timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run an experiment's entry script inside `folder` (a copy of the experiment folder)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, script, *args], check=False, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def source_files(folder: Path) -> list[str]:
    """The files of `folder` that git does not ignore, relative to it: its sources, tracked or
    new, and none of the outputs a run writes there (every one of them is in .gitignore, which
    tests/commands/test_outputs.py checks). Outside a git checkout, .gitignore's names are left
    out."""
    try:
        proc = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--cached", "--others",
                               "--exclude-standard", "--", "."], check=True,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        return sorted(str(p.relative_to(folder)) for p in walk_unignored(folder))
    # --cached lists a tracked file deleted from the work tree too; -z keeps odd names whole
    return sorted({name for name in proc.stdout.split("\0") if (folder / name).is_file()})


def gitignore_names(root: Path = REPO) -> list[str]:
    """.gitignore's patterns as plain names (`/data/` -> `data`), for shutil-style matching."""
    lines = (root / ".gitignore").read_text().splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and line[0] != "#"]


def walk_unignored(folder: Path):
    """Every file under `folder` none of whose path parts matches a .gitignore name."""
    import fnmatch
    names = gitignore_names()
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if path.is_file() and not any(fnmatch.fnmatch(p, n) for p in parts for n in names):
            yield path


def copy_sources(source: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy `source`'s files that git does not ignore to `dest` (none of a user's outputs),
    leaving out names matching a pattern of `skip`."""
    import fnmatch
    import shutil
    for name in source_files(source):
        if any(fnmatch.fnmatch(Path(name).name, pattern) for pattern in skip):
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, dest / name)
    return dest


def unignored_outputs(copy: Path, name: str) -> list[str]:
    """Files that runs wrote into `copy` (a copy_sources of experiment `name`) which the
    repository's .gitignore does not ignore there: each would show in a user's `git status`
    and, worse, be copied into the tests' experiment folders."""
    sources = set(source_files(REPO / name))
    written = sorted(str(p.relative_to(copy)) for p in copy.rglob("*")
                     if p.is_file() and str(p.relative_to(copy)) not in sources)
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin",
                               "-z"], check=False, input="\0".join(f"{name}/{w}" for w in written),
                              capture_output=True, text=True, timeout=60)
    except OSError:  # no git: .gitignore's names, as source_files does then
        kept = {str(p.relative_to(copy)) for p in walk_unignored(copy)}
        return [w for w in written if w in kept]
    if proc.returncode not in (0, 1):  # 1: none ignored
        raise AssertionError(f"git check-ignore failed: {proc.stderr}")
    ignored = set(proc.stdout.split("\0"))
    return [w for w in written if f"{name}/{w}" not in ignored]


@pytest.fixture
def experiment_copy(tmp_path: Path):
    """Copy an experiment folder's sources into tmp, so runs leave the repository clean and
    tests never read what a user's runs wrote there (fid_results.*, models/, logs/, ...)."""
    def make(name: str, source: Path = REPO) -> Path:
        return copy_sources(source / name, tmp_path / name)
    return make
