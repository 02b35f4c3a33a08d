"""Run one of the authors' scripts unmodified, on any device, beside ours.

    python scripts/run_authors.py --ref REF --experiment mnist-ladder --workdir W [--seed S]
        [--device cpu] [--data_root D] -- main_sym.py --call_prefix 0 --nz0 30 --nz1 100 ...

REF is a checkout of the authors' repository (github dschles70/symvae-aistats2024). Their
experiment folder is copied into W (W/logs, W/models, W/images receive their outputs), their
`./data` is linked to our data root (torchvision finds the raw files and downloads nothing),
and only what selects the device is changed: `torch.cuda.current_device()` answers --device.
--seed seeds torch, NumPy and Python before their script starts (they seed nothing).
"""
from __future__ import annotations

import argparse
import os
import random
import runpy
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symvae.data import default_data_root


def prepare(ref: Path, experiment: str, workdir: Path, data_root: Path) -> Path:
    """A copy of the authors' experiment folder in `workdir` with ./data pointing at our data."""
    source = ref / experiment
    if not (source / "hvae.py").is_file():
        raise SystemExit(f"error: {source}: no hvae.py; --ref must be a checkout of the authors' "
                         "repository")
    workdir.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.suffix == ".py":
            shutil.copy2(item, workdir / item.name)
    link = workdir / "data"
    if not link.exists():
        link.symlink_to(data_root.resolve(), target_is_directory=True)
    return workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data_root", type=Path, default=None)
    parser.add_argument("script", help="their script, e.g. main_sym.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    a = parser.parse_args(argv)
    folder = prepare(a.ref, a.experiment, a.workdir, a.data_root or default_data_root())

    import numpy as np
    import torch
    device = torch.device(a.device)
    torch.cuda.current_device = lambda: device  # their only device choice
    if a.seed is not None:
        random.seed(a.seed)
        np.random.seed(a.seed)
        torch.manual_seed(a.seed)
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    sys.argv = [a.script, *[x for x in a.args if x != "--"]]
    runpy.run_path(a.script, run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
