"""Training itself against the authors' code (symvae.authors.lockstep, tests/golden/lockstep.json).

From the weights the golden files' random seed gives, our learners run the iterations the
authors' code ran (its figures made by scripts/make_golden.py) on the same batches and shared
draws: every logged figure of every iteration and every weight at the end must agree. A
learning rule, optimiser or step order that differs shows here although each single step's
quantities agree.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from symvae.authors.crosscheck import TOLERANCE, seeded_model
from symvae.authors.lockstep import METHODS, SharedDraws, batches, log_difference, run_ours
from symvae.authors.reference import default_dtype
from symvae.experiment import EXPERIMENTS

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "lockstep.json").read_text())
STRICT = 1e-9  # float64 on both sides; the rounding of many steps stays far below this


def our_run(experiment: str, method: str, stepsize: float = 1e-4):
    g = GOLDEN
    model = seeded_model(experiment, g["nz0"], g["nz1"], g["seed"], g["log_sigma"]).double()
    data = batches(experiment, g["steps"], g["bs"], g["seed"], torch.float64)
    with default_dtype(torch.float64):
        return run_ours(model, method, data, SharedDraws(g["seed"]), stepsize)


def weight_difference(weights: dict[str, torch.Tensor], sums: dict[str, dict]) -> float:
    """The largest relative difference of a tensor's sum of squares and first entries."""
    assert set(weights) == set(sums)
    worst = 0.0
    for name, t in weights.items():
        flat, ref = t.double().flatten(), sums[name]
        worst = max(worst, abs(flat.square().sum().item() - ref["sumsq"]) / ref["sumsq"])
        for a, b in zip(flat[:3].tolist(), ref["first"]):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_training_follows_the_authors_code_step_by_step(experiment, method):
    run = GOLDEN["runs"][f"{experiment} {method}"]
    logs, weights = our_run(experiment, method)
    worst, first = log_difference(logs, run["logs"])
    assert first is None and worst <= STRICT, (worst, first)
    assert weight_difference(weights, run["weights"]) <= STRICT


@pytest.mark.parametrize(("method", "parts_at"), [("sym", 0), ("elbo", 1)])
def test_a_different_step_size_is_seen(method, parts_at):
    """The comparison can fail: 10% more step size parts the logs after the first update
    (symmetric: within iteration 0, whose q-step samples the p-step's updated model)."""
    run = GOLDEN["runs"][f"mnist-ladder {method}"]
    logs, weights = our_run("mnist-ladder", method, stepsize=1.1e-4)
    _, first = log_difference(logs, run["logs"])
    assert first == parts_at
    assert weight_difference(weights, run["weights"]) > TOLERANCE


def test_shared_draws_agree_whichever_way_a_code_asks():
    """torch.bernoulli(p), p.bernoulli() and rand > 1 - p give the same bits after a restart;
    p = 1/2 gives the authors' `rand > 0.5`; the draws are Bernoulli(p) in frequency."""
    draws = SharedDraws(3)
    p = torch.full((20000,), 0.25)
    with draws.installed():
        draws.restart(0)
        a = torch.bernoulli(p)
        draws.restart(0)
        b = p.bernoulli()
        draws.restart(0)
        c = (torch.rand(20000) > 0.75).float()
        draws.restart(0)
        half = (torch.rand([20000]) > 0.5).float()
        draws.restart(0)
        half_b = torch.bernoulli(torch.full((20000,), 0.5))
        draws.restart(1)
        other = torch.bernoulli(p)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(half, half_b)
    assert not torch.equal(a, other)
    assert abs(a.mean().item() - 0.25) < 0.015
    torch.manual_seed(5)
    x = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(x, torch.rand(4))  # torch's own generator again after the block
