"""Our models against the authors' code, on the same weights and the same inputs.

    python -m symvae crosscheck --ref DIR [--seeds 0 1 2] [--nz0 30] [--nz1 100] [--bs 64]

DIR is a checkout of the authors' repository. For each experiment and seed,
their HVAE is built from the seed, its state dict goes through symvae.learn.convert
into ours, and both codes are given the same fixed inputs: a batch x, latent
samples (z0, z1) for the p-step and the per-sample likelihoods, samples from
"p" for the q-step, and fixed ZGR samples for the ELBO. Compared are the
sampler logits, the per-sample negative log-likelihoods, the logged figures of
one iteration, the gradient norm of every parameter tensor in a p-step, a
q-step and an ELBO step, and the MI statistics of one update. The largest
relative difference of each quantity is printed; the exit status is 1 if any
exceeds 1e-5. The authors' side is symvae.authors.reference.
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from torch import Tensor

from symvae.authors.reference import (
    LOG_SIGMA,
    MI_SEEDS,
    Figures,
    default_dtype,
    figures_of_authors,
    float32,
    grad_norms,
    import_authors,
    seeded_authors_model,
)
from symvae.entry import entry_point, parse_args
from symvae.experiment import EXPERIMENTS, load_model_class
from symvae.learn.authors_format import from_authors
from symvae.learn.stats import bit_trackers
from symvae.model.hvae import HVAE
from symvae.model.nets import IMAGE_SHAPE

TOLERANCE = 1e-5
MI_RANGE = math.log(2.0)  # the largest MI of one bit


# --- the fixed inputs -----------------------------------------------------------------------
def make_inputs(experiment: str, nz0: int, nz1: int, bs: int, seed: int,
                dtype: torch.dtype = torch.float64) -> Figures:
    """A batch and latent samples drawn from their own generator (binary x, or grey for Fashion)."""
    g = torch.Generator().manual_seed(seed)

    def bits(*shape: int, p: float = 0.5) -> Tensor:
        return (torch.rand(shape, generator=g) < p).to(dtype)

    def images() -> Tensor:
        if experiment.startswith("fmnist"):
            return torch.rand((bs, *IMAGE_SHAPE), generator=g).to(dtype)
        return bits(bs, *IMAGE_SHAPE, p=0.2)

    return {"x": images(), "z0": bits(bs, nz0), "z1": bits(bs, nz1),  # data and z ~ q for p
            "xq": images(), "z0q": bits(bs, nz0), "z1q": bits(bs, nz1),  # (z, x) ~ p for q
            "e0": bits(bs, nz0), "e1": bits(bs, nz1)}  # the ELBO's ZGR samples


# --- our side -------------------------------------------------------------------------------
def figures_of_ours(model: HVAE, inputs: Figures, mi_start: dict | None) -> dict[str, Figures]:
    """The same quantities from our model; `mi_start` is the MI state the update starts from."""
    with default_dtype(inputs["x"].dtype):
        return _figures_of_ours(model, inputs, mi_start)


def _figures_of_ours(model: HVAE, inputs: Figures, mi_start: dict | None) -> dict[str, Figures]:
    x, z0, z1, bs = inputs["x"], inputs["z0"], inputs["z1"], len(inputs["x"])
    ladder = hasattr(model, "scores")
    out: dict[str, Figures] = {}
    with torch.no_grad():
        n_p1, n_px = model.nll_p_terms((z0, z1), x)
        if ladder:
            a0, a1 = model.scores(x)
            out["sampler"] = {"a0": a0, "a1": a1, "q(z1|z0,x)": model.p_z1(z0) + a1}
            n_q0, n_q1 = model.nll_q_terms((z0, z1), x)
            out["nll"] = {"-log q(z0|x)": n_q0, "-log q(z1|z0,x)": n_q1}
        else:
            out["sampler"] = {"q(z1|x)": model.q_z1_logits(x), "q(z0|z1)": model.q_z0(z1)}
            n_q1, n_q0 = model.nll_q_terms((z0, z1), x)
            out["nll"] = {"-log q(z1|x)": n_q1, "-log q(z0|z1)": n_q0}
        out["sampler"].update({"p(z1|z0)": model.p_z1(z0), "p(x|z1)": model.p_x(z1)})
        out["nll"]["-log p(z1|z0)"] = n_p1
        if model.pixels.binary:
            out["nll"]["-log p(x|z1)"] = n_px
        else:
            out["sampler"]["log sigma"] = model.pixels.log_sigma.detach().clone()

    def step(loss: Tensor) -> Figures:
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads = grad_norms(model)
        model.zero_grad(set_to_none=True)
        return grads

    loss, logs = model.nll_p((z0, z1), x)
    out["grad p-step"] = step(loss)
    loss, qlogs = model.nll_q((inputs["z0q"], inputs["z1q"]), inputs["xq"])
    out["grad q-step"] = step(loss)
    out["sym logs"] = {k: v.detach() for k, v in {**logs, **qlogs}.items()}
    loss, elogs, _ = model.elbo_loss(x, (inputs["e0"], inputs["e1"]))
    out["elbo logs"] = {k: v.detach() for k, v in elogs.items()}
    out["elbo loss"] = {"loss": loss.detach()}
    out["grad elbo"] = step(loss)
    if model.mi_names:  # symvae.learn.stats keeps float32 statistics; so does the authors' model
        trackers = bit_trackers(model.mi_names, model.nz0, model.nz1)
        for group, tracker in trackers.items():
            if mi_start is not None:
                tracker.load_state_dict(float32(mi_start[group]))
        model32 = copy.deepcopy(model).float()
        with torch.no_grad(), default_dtype(torch.float32):
            torch.manual_seed(MI_SEEDS[0])
            _, l1 = model32.sample_z(bs)
            trackers["p1"].update(l1)
            torch.manual_seed(MI_SEEDS[1])
            _, q_logits = model32.sample_q(x.float())
        for group in ("q0", "q1"):
            trackers[group].update(q_logits[group])
        out["mi"] = {f"{g}.{k}": v for g, t in trackers.items() for k, v in t.state_dict().items()}
    return out


# --- comparing ---------------------------------------------------------------------------------
def relative_difference(ours: Figures, theirs: Figures) -> float:
    """max |ours - theirs| / max |theirs| per entry, the largest over entries; inf when the
    entries differ (a name or a shape on one side only).

    An MI estimate (entries named *.mi) is measured against its range log 2 when smaller:
    at the start it is ~1e-6 per bit, a difference of two entropies near log 2, so float32
    leaves it a relative error of ~1e-4 in either code.
    """
    if set(ours) != set(theirs):
        return float("inf")
    worst = 0.0
    for name, ref in theirs.items():
        if ours[name].shape != ref.shape:
            return float("inf")
        diff = (ours[name].double() - ref.double()).abs().max()
        floor = MI_RANGE if name.endswith(".mi") else 1e-30
        worst = max(worst, float(diff / ref.double().abs().max().clamp_min(floor)))
    return worst


def compare(ours: dict[str, Figures], theirs: dict[str, Figures]) -> dict[str, float]:
    """The largest relative difference of every quantity (group/entry for small groups)."""
    out = {}
    for group, values in theirs.items():
        mine = ours.get(group, {})
        if group.startswith("grad"):  # per parameter tensor; one figure per network step
            out[group] = relative_difference(mine, values)
        else:
            for name, value in values.items():
                out[f"{group}: {name}"] = relative_difference(
                    {name: mine[name]} if name in mine else {}, {name: value})
    return out


def seeded_model(experiment: str, nz0: int, nz1: int, seed: int,
                 log_sigma: float | None = LOG_SIGMA) -> HVAE:
    """Our model as torch.manual_seed(seed) creates it (the authors' weights for that seed),
    Fashion's log sigma set to `log_sigma` as symvae.authors.reference.seeded_authors_model
    sets theirs."""
    torch.manual_seed(seed)
    model = load_model_class(experiment)(nz0, nz1)
    with torch.no_grad():
        for p in model.pixels.parameters():
            p.fill_(log_sigma)
    return model


def crosscheck(ref: Path, experiment: str, nz0: int, nz1: int, bs: int, seed: int,
               dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Both codes on the weights of `seed` and on fixed inputs: the differences by quantity."""
    hvae, elbo = import_authors(ref, experiment)
    theirs = seeded_authors_model(hvae, experiment, nz0, nz1, seed)
    seeded = seeded_model(experiment, nz0, nz1, seed)
    diffs = {"weights: built from the same seed": relative_difference(
        seeded.state_dict(), from_authors(theirs.state_dict(), experiment)[0])}
    theirs.to(dtype)
    state = theirs.state_dict()
    weights, mi_start = from_authors(state, experiment)
    model = load_model_class(experiment)(nz0, nz1).to(dtype)
    model.load_state_dict(weights)
    inputs = make_inputs(experiment, nz0, nz1, bs, seed, dtype)
    reference = figures_of_authors(hvae, elbo, experiment, state, inputs)
    diffs.update(compare(figures_of_ours(model, inputs, mi_start), reference))
    if model.mi_names:  # our statistics as they start in a fresh run
        fresh = figures_of_ours(model, inputs, None)["mi"]
        diffs["mi from fresh statistics"] = relative_difference(fresh, reference["mi"])
    torch.manual_seed(seed)  # the same draws of z ~ q(z|x): both sample bits in one order
    their_z = theirs.sample_q(inputs["x"])
    torch.manual_seed(seed)
    our_z, _ = model.sample_q(inputs["x"])
    diffs["sample_q: share of differing bits"] = float(sum(
        (a != b).float().sum() for a, b in zip(our_z, their_z)) / sum(z.numel() for z in our_z))
    return diffs


@entry_point("crosscheck")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compare our models with the authors' code on "
                                "the same weights and inputs.")
    p.add_argument("--ref", type=Path, required=True, help="checkout of the authors' repository")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--nz0", type=int, default=30)
    p.add_argument("--nz1", type=int, default=100)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="float64 (default) shows the formulas; float32 adds the rounding of "
                        "training, which differs where terms cancel (klloss near 0)")
    args = parse_args(p, argv)
    from symvae.cli import fail, positive
    for flag in ("nz0", "nz1", "bs"):
        positive(f"--{flag}", getattr(args, flag))
    worst: dict[str, float] = {}
    for experiment in args.experiments:
        for seed in args.seeds:
            try:
                diffs = crosscheck(args.ref, experiment, args.nz0, args.nz1, args.bs, seed,
                                   getattr(torch, args.dtype))
            except FileNotFoundError as err:
                fail(str(err))
            for name, value in diffs.items():
                key = f"{experiment} | {name}"
                worst[key] = max(worst.get(key, 0.0), value)
    print(f"largest relative difference over seeds {args.seeds} (nz0 {args.nz0}, nz1 "
          f"{args.nz1}, batch {args.bs}, {args.dtype}); tolerance {TOLERANCE:g}")
    bad = 0
    for key, value in worst.items():
        flag = "" if value <= TOLERANCE else "  EXCEEDS"
        bad += bool(flag)
        print(f"{key:<58} {value:.2e}{flag}")
    print(f"{bad} of {len(worst)} quantities exceed {TOLERANCE:g}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
