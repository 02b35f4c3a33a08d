"""Both codes trained side by side on the same draws: many iterations, not one step.

    python -m symvae lockstep --ref DIR [--steps 50] [--nz0 30] [--nz1 100] [--bs 64]
                              [--methods sym elbo] [--experiments ...] [--dtype float64]

From the weights of one seed, the authors' HVAE and ours each run STEPS training iterations
on the same batches. Symmetric learning: their model's sample_q, optimize_p, sample_p and
optimize_q in the order of their main_sym.py; ours SymmetricLearner.step. ELBO learning: one
Adam over all parameters on their negative ELBO (symvae.authors.reference rebuilds their loop body);
ours ElboLearner.step. Every draw of a sampler, a ZGR sample or p(x|z1)'s noise comes from one
stream that both codes share and that restarts at each sampling call, so that both see the
same randomness as long as they compute the same probabilities. Compared are the logged
figures of every iteration and every weight at the end.

symvae.authors.crosscheck checks one iteration's quantities; this checks what it cannot see: the
optimisers (groups, step sizes, moments), the order of the steps, which samples each step is
given, and that nothing else changes the weights. In float64 any difference in the learning
rule shows far above rounding; in float32 the runs part once rounding flips a sample.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from unittest import mock

import torch
from torch import Tensor

from symvae.authors.crosscheck import TOLERANCE, relative_difference
from symvae.authors.reference import (
    STEP,
    Figures,
    authors_elbo,
    default_dtype,
    import_authors,
    seeded_authors_model,
)
from symvae.entry import entry_point, parse_args
from symvae.experiment import EXPERIMENTS, load_model_class
from symvae.learn.authors_format import from_authors, order
from symvae.learn.rules import LEARNERS
from symvae.model.hvae import HVAE
from symvae.model.nets import IMAGE_SHAPE

METHODS = ("sym", "elbo")
Q_DRAWS, P_DRAWS, ZGR_DRAWS = range(3)  # the sampling calls of an iteration (ZGR: 2, 3, ...)


class SharedDraws:
    """torch's Bernoulli, uniform and normal draws, taken from one generator that `restart`
    sets to a state given by (seed, iteration, call). A Bernoulli(p) draw is u > 1 - p for a
    uniform u, so that p = 1/2 gives the authors' `rand > 0.5` for the bits of p(z0)."""

    def __init__(self, seed: int):
        self.seed, self.step, self.zgr_calls = seed, 0, 0
        self.gen = torch.Generator()

    def begin(self, step: int) -> None:
        self.step, self.zgr_calls = step, 0

    def restart(self, call: int) -> None:
        self.gen.manual_seed((self.seed * 1_000_003 + self.step) * 8 + call)

    def restart_zgr(self) -> None:
        """Before each ZGR sample: their ELBO loop also draws samples it discards."""
        self.restart(ZGR_DRAWS + self.zgr_calls)
        self.zgr_calls += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route torch.bernoulli, Tensor.bernoulli, torch.rand(_like), torch.randn_like here,
        and make Tensor.float give the default dtype (float64 runs)."""
        rand, randn = torch.rand, torch.randn

        def uniform(shape, dtype=None, device=None) -> Tensor:
            return rand(shape, generator=self.gen, dtype=dtype, device=device)

        def bernoulli(p: Tensor, *args, **kwargs) -> Tensor:
            return (uniform(p.shape, p.dtype, p.device) > 1 - p).to(p.dtype)

        def uniform_of(*size, dtype=None, device=None, **kwargs) -> Tensor:
            shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
            return uniform(tuple(shape), dtype, device)

        patches = {
            (torch, "bernoulli"): bernoulli, (torch.Tensor, "bernoulli"): bernoulli,
            (torch, "rand"): uniform_of,
            (torch, "rand_like"): lambda t, **kw: uniform(t.shape, t.dtype, t.device),
            (torch, "randn_like"): lambda t, **kw: randn(t.shape, generator=self.gen,
                                                         dtype=t.dtype, device=t.device),
            # their `.float()` (mnist-reverse's bits of p(z0)) means the working precision
            (torch.Tensor, "float"): lambda t, *a, **kw: t.to(torch.get_default_dtype()),
        }
        saved = {key: getattr(*key) for key in patches}
        try:
            for (owner, name), fn in patches.items():
                setattr(owner, name, fn)
            yield
        finally:
            for (owner, name), fn in saved.items():
                setattr(owner, name, fn)


def batches(experiment: str, n: int, bs: int, seed: int, dtype: torch.dtype) -> list[Tensor]:
    """`n` fixed batches: binary images with 20% ones (MNIST) or uniform grey (Fashion)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u = torch.rand((bs, *IMAGE_SHAPE), generator=g, dtype=torch.float64)
        out.append((u if experiment.startswith("fmnist") else (u < 0.2).double()).to(dtype))
    return out


def _scalars(logs: Figures) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in logs.items()}


# --- the two runs ----------------------------------------------------------------------------
def run_authors(m: torch.nn.Module, elbo: ModuleType, experiment: str, method: str,
                data: list[Tensor], draws: SharedDraws
                ) -> tuple[list[dict[str, float]], dict[str, Tensor]]:
    """Their model `m` trained in place on `data`; returns each iteration's logged figures and,
    at the end, the weights under our names."""
    ladder = order(experiment) == "ladder"
    opt = torch.optim.Adam(m.parameters(), lr=STEP) if method == "elbo" else None
    parts = SimpleNamespace(ZGR_binary=_restarting(elbo.ZGR_binary, draws.restart_zgr),
                            kl=getattr(elbo, "kl", None))  # mnist-reverse has none
    logs = []
    with draws.installed():
        for t, x in enumerate(data):
            draws.begin(t)
            if method == "sym":  # main_sym.py's learning lines
                draws.restart(Q_DRAWS)
                z0, z1 = m.sample_q(x)
                lp = m.optimize_p(z0, z1, x)
                draws.restart(P_DRAWS)
                z0, z1, xp = m.sample_p(len(x))
                lq = m.optimize_q(z0, z1, xp)
                names = ("ploss1", "plossx", "qloss0", "qloss1") if ladder else ("ploss", "qloss")
                values = (*lp, *lq) if ladder else (lp, lq)
                logs.append({n: float(v) for n, v in zip(names, values)})
            else:  # main_elbo.py's loop body
                opt.zero_grad()
                loss, figures = authors_elbo(m, parts, experiment, {"x": x})
                loss.backward()
                opt.step()
                logs.append(_scalars(figures))
    return logs, from_authors(m.state_dict(), experiment)[0]


def run_ours(model: HVAE, method: str, data: list[Tensor], draws: SharedDraws,
             stepsize: float = STEP) -> tuple[list[dict[str, float]], dict[str, Tensor]]:
    """Our `model` trained in place on `data` by our learner; returns the logged figures and
    the final weights."""
    learner = LEARNERS[method](model, stepsize, guard=False)
    # our step draws z ~ q and (z, x) ~ p, or the ZGR samples, inside; restart before each
    home = sys.modules[type(model).elbo_loss.__module__]  # where elbo_loss finds zgr_sample
    restarting = {(model, "sample_q"): lambda: draws.restart(Q_DRAWS),
                  (model, "sample_p"): lambda: draws.restart(P_DRAWS),
                  (home, "zgr_sample"): draws.restart_zgr}
    logs = []
    with draws.installed(), contextlib.ExitStack() as stack:
        for (owner, name), restart in restarting.items():
            stack.enter_context(mock.patch.object(owner, name,
                                                  _restarting(getattr(owner, name), restart)))
        for t, x in enumerate(data):
            draws.begin(t)
            step_logs, _ = learner.step(x)
            logs.append(_scalars(step_logs))
    return logs, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restarting(fn: Callable, restart: Callable[[], None]) -> Callable:
    def wrapped(*args, **kwargs):
        restart()
        return fn(*args, **kwargs)
    return wrapped


# --- comparing -------------------------------------------------------------------------------
def log_difference(ours: list[dict[str, float]], theirs: list[dict[str, float]]
                   ) -> tuple[float, int | None]:
    """The largest relative difference of a logged figure over all iterations, and the first
    iteration (from 0) where it exceeds TOLERANCE (None if none does)."""
    if len(ours) != len(theirs):
        return float("inf"), 0
    worst, first = 0.0, None
    for t, (mine, ref) in enumerate(zip(ours, theirs)):
        if set(mine) != set(ref):
            return float("inf"), t
        diff = max(abs(mine[k] - v) / max(abs(v), 1e-30) for k, v in ref.items())
        worst = max(worst, diff)
        if first is None and diff > TOLERANCE:
            first = t
    return worst, first


def lockstep(ref: Path, experiment: str, method: str, nz0: int, nz1: int, bs: int, steps: int,
             seed: int, dtype: torch.dtype) -> dict[str, float | int | None]:
    """Both codes for `steps` iterations of `method` from the weights of `seed`."""
    hvae, elbo = import_authors(ref, experiment)
    theirs = seeded_authors_model(hvae, experiment, nz0, nz1, seed).to(dtype)
    ours = load_model_class(experiment)(nz0, nz1).to(dtype)
    ours.load_state_dict(from_authors(theirs.state_dict(), experiment)[0])
    data = batches(experiment, steps, bs, seed, dtype)
    with default_dtype(dtype):
        their_logs, their_weights = run_authors(theirs, elbo, experiment, method, data,
                                                SharedDraws(seed))
        our_logs, our_weights = run_ours(ours, method, data, SharedDraws(seed))
    logs, first = log_difference(our_logs, their_logs)
    return {"logs": logs, "first over tolerance": first,
            "weights": relative_difference(our_weights, their_weights)}


@entry_point("lockstep")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the authors' model and ours side by side "
                                "on the same batches and draws, and compare.")
    p.add_argument("--ref", type=Path, required=True, help="checkout of the authors' repository")
    p.add_argument("--steps", type=int, default=50, help="training iterations per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nz0", type=int, default=30)
    p.add_argument("--nz1", type=int, default=100)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="float64 (default) shows the learning rules; in float32 rounding "
                        "alone parts the runs once it flips a sample")
    args = parse_args(p, argv)
    from symvae.cli import fail, positive
    for flag in ("nz0", "nz1", "bs", "steps"):
        positive(f"--{flag}", getattr(args, flag))
    print(f"lockstep: {args.steps} iterations from seed {args.seed} (nz0 {args.nz0}, nz1 "
          f"{args.nz1}, batch {args.bs}, {args.dtype}); largest relative difference, "
          f"tolerance {TOLERANCE:g}")
    bad = 0
    for experiment in args.experiments:
        for method in args.methods:
            try:
                r = lockstep(args.ref, experiment, method, args.nz0, args.nz1, args.bs,
                             args.steps, args.seed, getattr(torch, args.dtype))
            except FileNotFoundError as err:
                fail(str(err))
            over = r["logs"] > TOLERANCE or r["weights"] > TOLERANCE
            bad += over
            first = "" if r["first over tolerance"] is None else \
                f"  (logs part at iteration {r['first over tolerance'] + 1})"
            print(f"{experiment:<14} {method:<5} logs {r['logs']:.2e}  weights "
                  f"{r['weights']:.2e}{'  EXCEEDS' if over else ''}{first}")
    print(f"{bad} of {len(args.experiments) * len(args.methods)} runs exceed {TOLERANCE:g}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
