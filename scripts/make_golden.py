"""Write tests/golden: what the authors' code computes on fixed weights and inputs.

    python scripts/make_golden.py --ref DIR [--out tests/golden] [--commit HASH]

DIR is a checkout of the authors' repository (github dschles70/symvae-aistats2024). For each
experiment, their HVAE is built after torch.manual_seed(SEED) (Fashion's log sigma then set to
symvae.authors.reference.LOG_SIGMA); EXPERIMENT.json holds the
sizes, the authors' commit and checksums of every weight tensor (our names), EXPERIMENT.npz
the fixed inputs ("input::NAME") and every quantity of symvae.authors.crosscheck ("GROUP::NAME"),
computed in float64 so that float32 rounding (large where terms cancel) does not blur them.
tests/authors/test_golden.py builds our models from the same seed and compares, without DIR.
lockstep.json holds, per experiment and method, the authors' logged figures of LOCKSTEP_STEPS
training iterations of symvae.authors.lockstep and checksums of their weights after them
(tests/authors/test_lockstep.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symvae.authors.crosscheck import make_inputs
from symvae.authors.lockstep import METHODS, SharedDraws, batches, run_authors
from symvae.authors.reference import (
    LOG_SIGMA,
    default_dtype,
    figures_of_authors,
    import_authors,
    seeded_authors_model,
)
from symvae.experiment import EXPERIMENTS
from symvae.learn.authors_format import from_authors

SEED, NZ0, NZ1, BATCH = 0, 6, 10, 8
LOCKSTEP_STEPS = 8
SEP = "::"


def checksums(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per tensor: sum, sum of |w|, sum of squares and the first three entries (float64)."""
    out = {}
    for name, t in state.items():
        flat = t.detach().double().flatten()
        out[name] = {"sum": flat.sum().item(), "abs": flat.abs().sum().item(),
                     "sumsq": flat.square().sum().item(), "first": flat[:3].tolist()}
    return out


def authors_commit(ref: Path, given: str | None) -> str:
    if given:
        return given
    proc = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def write(ref: Path, out: Path, experiment: str, commit: str) -> None:
    hvae, elbo = import_authors(ref, experiment)
    model = seeded_authors_model(hvae, experiment, NZ0, NZ1, SEED)
    weights, _ = from_authors(model.state_dict(), experiment)  # float32, as created
    state = model.double().state_dict()  # computed in float64: only the formulas differ
    inputs = make_inputs(experiment, NZ0, NZ1, BATCH, SEED)
    figures = figures_of_authors(hvae, elbo, experiment, state, inputs)
    arrays = {f"input{SEP}{k}": v.numpy() for k, v in inputs.items()}
    arrays.update({f"{group}{SEP}{name}": v.detach().numpy()
                   for group, values in figures.items() for name, v in values.items()})
    np.savez_compressed(out / f"{experiment}.npz", **arrays)
    meta = {"experiment": experiment, "seed": SEED, "nz0": NZ0, "nz1": NZ1, "bs": BATCH,
            "log_sigma": LOG_SIGMA if experiment.startswith("fmnist") else None,
            "authors_commit": commit, "torch": torch.__version__,
            "checksums": checksums(weights)}
    (out / f"{experiment}.json").write_text(json.dumps(meta, indent=1) + "\n")


def write_lockstep(ref: Path, out: Path, commit: str) -> None:
    """The authors' side of symvae.authors.lockstep on the golden sizes, in float64."""
    runs = {}
    for experiment in EXPERIMENTS:
        hvae, elbo = import_authors(ref, experiment)
        for method in METHODS:  # weights made in float32 as in training, then run in float64
            model = seeded_authors_model(hvae, experiment, NZ0, NZ1, SEED).double()
            data = batches(experiment, LOCKSTEP_STEPS, BATCH, SEED, torch.float64)
            with default_dtype(torch.float64):
                logs, weights = run_authors(model, elbo, experiment, method, data,
                                            SharedDraws(SEED))
            runs[f"{experiment} {method}"] = {"logs": logs, "weights": checksums(weights)}
    meta = {"seed": SEED, "nz0": NZ0, "nz1": NZ1, "bs": BATCH, "steps": LOCKSTEP_STEPS,
            "log_sigma": LOG_SIGMA, "authors_commit": commit, "torch": torch.__version__,
            "runs": runs}
    (out / "lockstep.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", type=Path, required=True, help="checkout of the authors' repository")
    p.add_argument("--out", type=Path, default=Path("tests/golden"))
    p.add_argument("--commit", default=None, help="the authors' commit (default: git of --ref)")
    args = p.parse_args()
    if not all((args.ref / e / "hvae.py").is_file() for e in EXPERIMENTS):
        print(f"error: {args.ref}: not a checkout of the authors' repository (no "
              "EXPERIMENT/hvae.py); pass --ref DIR", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    commit = authors_commit(args.ref, args.commit)
    for experiment in EXPERIMENTS:
        write(args.ref, args.out, experiment, commit)
        print(f"wrote {args.out / experiment}.npz and .json")
    write_lockstep(args.ref, args.out, commit)
    print(f"wrote {args.out / 'lockstep.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
