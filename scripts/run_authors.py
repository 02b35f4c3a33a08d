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
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symvae.authors.scripts import AuthorsMissing, prepare, run_script
from symvae.data.raw import default_data_root


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
    try:
        folder = prepare(a.ref, a.experiment, a.workdir, a.data_root or default_data_root())
    except AuthorsMissing as err:
        raise SystemExit(f"error: --ref {err}") from None
    if a.seed is not None:
        import numpy as np
        import torch
        random.seed(a.seed)
        np.random.seed(a.seed)
        torch.manual_seed(a.seed)
    run_script(folder, a.device, a.script, [x for x in a.args if x != "--"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
