"""The authors' scripts (github dschles70/symvae-aistats2024) run unmodified beside ours;
symvae.authors.reference imports their modules for the crosscheck instead.

Only what selects the device changes: `torch.cuda.current_device()` answers the
device asked for. Their experiment folder is copied into a work folder (their
logs, models and images land there) with `./data` linked to our data root, so
torchvision finds the raw files and downloads nothing.

Timing (`python -m symvae bench --ref DIR`): their main_sym.py / main_elbo.py run
in a child process (their anomaly detection and modules stay out of ours) for
warm-up + timed iterations; each iteration starts with exactly one call of their
data set's `get_batch`, so the time between consecutive calls (the device
synchronised) is one whole iteration of their loop, as shipped.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from symvae.data.raw import default_data_root
from symvae.ground import REPO_ROOT

SCRIPTS = {"sym": "main_sym.py", "elbo": "main_elbo.py"}


class AuthorsMissing(RuntimeError):
    """The folder given is not a checkout of the authors' repository."""


def prepare(ref: Path, experiment: str, workdir: Path, data_root: Path) -> Path:
    """A copy of the authors' experiment folder in `workdir` with ./data pointing at our data."""
    source = Path(ref) / experiment
    if not (source / "hvae.py").is_file():
        raise AuthorsMissing(f"{source}: no hvae.py; give a checkout of the authors' "
                             "repository (github dschles70/symvae-aistats2024)")
    workdir.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.suffix == ".py":
            shutil.copy2(item, workdir / item.name)
    link = workdir / "data"
    if not link.exists():
        link.symlink_to(Path(data_root).resolve(), target_is_directory=True)
    return workdir


def run_script(folder: Path, device: str, script: str, args: list[str],
               on_batch=None) -> None:
    """Run their `script` in `folder` (prepared) on `device`, in this process.

    `on_batch()` is called at the start of each call of their data set's get_batch.
    """
    import torch
    dev = torch.device(device)
    if dev.type == "cuda":  # their only device choice, answered by CUDA itself (an index)
        torch.cuda.set_device(dev.index or 0)
    else:
        torch.cuda.current_device = lambda: dev
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    if on_batch is not None:
        for name in ("mnist", "fmnist"):
            if (folder / f"{name}.py").is_file():
                module = __import__(name)
                cls = getattr(module, name.upper())
                batch = cls.get_batch

                def timed(self, *a, _batch=batch, **k):
                    on_batch()
                    return _batch(self, *a, **k)
                cls.get_batch = timed
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def _child(argv: list[str]) -> int:
    """Child process: run their script for warm-up + iters iterations, print the times."""
    p = argparse.ArgumentParser()
    for flag in ("--ref", "--experiment", "--method", "--device", "--data_root", "--workdir"):
        p.add_argument(flag, required=True)
    for flag in ("--bs", "--iters", "--warmup", "--threads"):
        p.add_argument(flag, type=int, required=True)
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    stamps: list[tuple[float, float]] = []

    def stamp() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        stamps.append((time.perf_counter(), time.process_time()))
    folder = prepare(Path(a.ref), a.experiment, Path(a.workdir), Path(a.data_root))
    n = a.warmup + a.iters
    run_script(folder, a.device, SCRIPTS[a.method],
               ["--call_prefix", "bench", "--nz0", "30", "--nz1", "100", "--stepsize", "1e-4",
                "--bs", str(a.bs), "--niterations", str(n)], on_batch=stamp)
    stamp()  # the end of the last iteration
    pairs = list(itertools.pairwise(stamps))[a.warmup:]
    print(json.dumps({"times": [b[0] - a_[0] for a_, b in pairs],
                      "cpu": [b[1] - a_[1] for a_, b in pairs]}))
    return 0


def time_authors(ref: Path, experiment: str, method: str, bs: int, device: str, iters: int,
                 warmup: int, threads: int, data_root: Path | None = None
                 ) -> tuple[list[float], list[float]]:
    """(wall, process CPU) seconds of each of `iters` iterations of their script after
    `warmup` ones (child process)."""
    with tempfile.TemporaryDirectory(prefix="authors-") as work:
        cmd = [sys.executable, "-m", "symvae.authors.scripts", "--ref", str(Path(ref).resolve()),
               "--experiment", experiment, "--method", method, "--device", device,
               "--data_root", str(data_root or default_data_root()), "--workdir", work,
               "--bs", str(bs), "--iters", str(iters), "--warmup", str(warmup),
               "--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AuthorsMissing(f"the authors' {experiment} {SCRIPTS[method]} failed: {tail[0]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["times"], result["cpu"]


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
