"""Shared fixtures: small synthetic IDX data sets and running an experiment's scripts."""
from __future__ import annotations

import hashlib
import os
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


@pytest.fixture
def experiment_copy(tmp_path: Path):
    """Copy an experiment folder's sources into tmp, so runs leave the repository clean."""
    import shutil

    def make(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(REPO / name, dest, ignore=shutil.ignore_patterns(
            "images", "logs", "models", "generated_data", "__pycache__"))
        return dest
    return make
