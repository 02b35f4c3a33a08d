"""Symmetric learning and ELBO from one start on the toy model, judged by exact figures.

  python -m symvae toy --seeds 0 1 2 3 --plot docs/toy.png

For each encoder order and seed, one model is initialised; both rules train a
copy of it on iid batches from pi(x) through the library's learners, and the
figures of symvae.toy.exact are printed every --every iterations, then summarised.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
from pathlib import Path

import torch

from symvae.cli import check_flags, fail, new_parser, pick_device
from symvae.entry import entry_point, parse_args
from symvae.learn.rules import LEARNERS
from symvae.model.hvae import HVAE
from symvae.toy.exact import FIGURES, evaluate
from symvae.toy.problem import ENCODERS, FLIP, PROTOTYPES, WEIGHTS, ToyData

MAX_NX = 12  # the joint table has 2^(nz0 + nz1 + nx) entries
AGREEMENT_TV = 0.05  # a run "agrees" when TV(q(z|x)pi(x), p(z,x)) ends below this
History = list[tuple[int, dict[str, float]]]


def set_stepsize(learner, stepsize: float) -> None:
    for opt in learner.optimizers:
        for group in opt.param_groups:
            group["lr"] = stepsize


def train_toy(model: HVAE, method: str, data: ToyData, iterations: int, bs: int,
              stepsize: float, every: int, device: torch.device | str = "cpu") -> History:
    """Train `model` in place by LEARNERS[method]; exact figures at 0, every `every`, and the end.

    The step size decays from `stepsize` to 0 along a half cosine: the figures
    judge the final parameters, and a constant step would leave them jittering
    at the scale of the step, hiding where each rule settles.
    """
    learner = LEARNERS[method](model.to(device), stepsize)
    history: History = [(0, evaluate(model, data.pi))]
    for it in range(1, iterations + 1):
        set_stepsize(learner, stepsize * 0.5 * (1 + math.cos(math.pi * (it - 1) / iterations)))
        learner.step(data.sample(bs, device))
        if it % every == 0 or it == iterations:
            history.append((it, evaluate(model, data.pi)))
    return history


def run(data: ToyData, encoders: list[str], seeds: list[int], iterations: int, bs: int,
        stepsize: float, every: int, device: torch.device) -> dict[tuple[str, str, int], History]:
    """Histories of both rules, keyed by (encoder, method, seed); prints each figure line."""
    print("# figures:", "; ".join(f"{k} = {v}" for k, v in FIGURES.items()))
    print("encoder method seed iteration " + " ".join(FIGURES))
    results = {}
    for encoder in encoders:
        for seed in seeds:
            torch.manual_seed(seed)
            start = ENCODERS[encoder](nx=data.nx)
            for method in LEARNERS:
                torch.manual_seed(seed)  # the same data and sampling stream for both rules
                history = train_toy(copy.deepcopy(start), method, data, iterations, bs,
                                    stepsize, every, device)
                for it, figures in history:
                    print(f"{encoder} {method} {seed} {it} "
                          + " ".join(f"{figures[k]:.4f}" for k in FIGURES), flush=True)
                results[encoder, method, seed] = history
    return results


def summary(results: dict[tuple[str, str, int], History]) -> list[str]:
    """Per encoder and rule: median final figures over the seeds and the runs that agree."""
    lines = [f"encoder method agree(tv_joint<{AGREEMENT_TV}) "
             + " ".join(f"median_{k}" for k in FIGURES)]
    for encoder, method in dict.fromkeys((e, m) for e, m, _ in results):
        finals = [h[-1][1] for (e, m, _), h in results.items() if (e, m) == (encoder, method)]
        agree = sum(f["tv_joint"] < AGREEMENT_TV for f in finals)
        lines.append(f"{encoder} {method} {agree}/{len(finals)} " + " ".join(
            f"{statistics.median(f[k] for f in finals):.4f}" for k in FIGURES))
    return lines


def plot(results: dict[tuple[str, str, int], History], path: Path) -> None:
    """TV of the joints and of the stationary law against pi, per encoder, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(dict.fromkeys(e for e, _, _ in results))
    fig, axes = plt.subplots(2, len(encoders), figsize=(3.4 * len(encoders), 4.6),
                             sharex=True, sharey=True, squeeze=False)
    colours = {"sym": "tab:blue", "elbo": "tab:red"}
    for (encoder, method, _), history in results.items():
        col = encoders.index(encoder)
        its = [it for it, _ in history]
        for row, key in enumerate(("tv_joint", "tv_stationary")):
            axes[row, col].plot(its, [f[key] for _, f in history], color=colours[method],
                                lw=0.8, alpha=0.7, label=method)
    for col, encoder in enumerate(encoders):
        axes[0, col].set_title(f"{encoder} encoder", fontsize=9)
        axes[1, col].set_xlabel("iteration", fontsize=8)
    axes[0, 0].set_ylabel("TV(qπ, p) of joints", fontsize=8)
    axes[1, 0].set_ylabel("TV(stationary, π)", fontsize=8)
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.axhline(AGREEMENT_TV, color="grey", lw=0.5, ls=":")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def toy_data(args: argparse.Namespace) -> ToyData:
    """pi(x) from the flags, or one line naming the flag at fault."""
    protos = tuple(args.prototypes)
    if len({len(p) for p in protos}) != 1 or any(set(p) - {"0", "1"} for p in protos):
        fail(f"--prototypes {' '.join(protos)}: give bit strings of one length, e.g. 1100 0011")
    if not 1 <= len(protos[0]) <= MAX_NX:
        fail(f"--prototypes: {len(protos[0])} bits; enumeration allows 1 to {MAX_NX}")
    weights = args.weights
    if weights is None:
        weights = WEIGHTS if protos == PROTOTYPES else [1.0] * len(protos)
    if len(weights) != len(protos) or min(weights) < 0 or sum(weights) <= 0:
        fail(f"--weights: give {len(protos)} non-negative numbers, one per prototype")
    if not 0 <= args.flip <= 0.5:
        fail(f"--flip {args.flip}: must be a probability between 0 and 0.5")
    total = sum(weights)
    return ToyData(protos, tuple(w / total for w in weights), args.flip)


@entry_point("toy_train")
def main(argv: list[str] | None = None) -> int:
    p = new_parser(description="Symmetric learning vs ELBO on an enumerable model.")
    p.add_argument("--encoder", nargs="+", choices=sorted(ENCODERS), default=["ladder", "reverse"],
                   help="encoder orders to train (default both)")
    p.add_argument("--prototypes", nargs="+", default=list(PROTOTYPES),
                   help="pi(x): equal-length bit strings (default %(default)s)")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="prototype weights (default: toy.WEIGHTS, or equal for --prototypes)")
    p.add_argument("--flip", type=float, default=FLIP, help="bit-flip probability of pi(x)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one start per seed")
    p.add_argument("--iterations", type=int, default=3000, help="iterations per run")
    p.add_argument("--bs", type=int, default=256, help="mini-batch size")
    p.add_argument("--stepsize", type=float, default=3e-3, help="initial Adam step (cosine to 0)")
    p.add_argument("--every", type=int, default=100, help="iterations between exact evaluations")
    p.add_argument("--plot", type=Path, default=None, help="write the TV curves to this PNG")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    args = parse_args(p, argv)
    check_flags(args, skip=("stepsize",))  # --seeds, --bs, --device as everywhere
    for flag in ("iterations", "bs", "every"):
        if getattr(args, flag) < 1:
            fail(f"--{flag} {getattr(args, flag)}: must be a positive integer")
    if not 0 < args.stepsize < 1:
        fail(f"--stepsize {args.stepsize}: must be a positive step below 1 (e.g. 3e-3)")
    torch.set_num_threads(1)  # layers of width 32: splitting them over threads costs more
    results = run(toy_data(args), args.encoder, args.seeds, args.iterations, args.bs, args.stepsize,
                  args.every, pick_device(args.device))
    print("\n".join(summary(results)))
    if args.plot is not None:
        plot(results, args.plot)
        print(f"# plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
