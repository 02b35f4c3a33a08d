"""The fast paths against plain computations of SPEC §3–§5 (no timings here: see
symvae.reproduce.bench).

- One learning step of the library (with the process settings of symvae.learn.runtime) gives
  the same losses and the same Adam parameter change as a plain step written out from SPEC §4,
  on the same inputs and the same random draws.
- The MI statistics taken from the logits the sampling already produced equal, in
  expectation, those of a separate encoder pass; the batch sampler draws every
  image equally often, with no repeats inside a batch.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symvae.data.datasets import DeviceData
from symvae.experiment import load_model_class
from symvae.learn import runtime
from symvae.learn.rules import LEARNERS
from symvae.model.ladder import LadderHVAE
from symvae.reproduce import bench

LADDERS = [name for name in bench.available_experiments()
           if issubclass(load_model_class(name), LadderHVAE)]
BS, NZ0, NZ1, SEED = 16, 6, 10, 7
# The README's step size. Adam's first step moves every parameter by about LR * sign(gradient),
# so where a true gradient is ~0 mere rounding could flip it: a small LR keeps 1e-6 meaningful.
LR = 1e-4


# --- the plain reference: SPEC §4 written out against the layers ----------------------------
def bce(logits, value):
    return F.binary_cross_entropy_with_logits(logits, value, reduction="none").flatten(1).sum(1)


def pixel_nll(model, out, x):
    if model.pixels.binary:
        return bce(out, x)
    ls = model.pixels.log_sigma
    # 0.91894: the authors' rounding of 0.5*log(2*pi), which the library keeps
    return (0.91894 + ls + (x - out) ** 2 / (2 * torch.exp(ls) ** 2)).flatten(1).sum(1)


def pixel_sample(model, out):
    if model.pixels.binary:
        return torch.bernoulli(torch.sigmoid(out))
    return out + torch.exp(model.pixels.log_sigma) * torch.randn_like(out)


def ladder_scores(m, x):
    h = m.r_trunk(x)
    a1 = m.r_a1(h)
    return m.r_a0(h) + m.r_a0_skip(a1), a1


def plain_sym_step(m, x, opt_p, opt_q):
    with torch.no_grad():
        a0, a1 = ladder_scores(m, x)
        z0 = torch.bernoulli(torch.sigmoid(a0))
        z1 = torch.bernoulli(torch.sigmoid(m.p_z1(z0) + a1))
    p_loss = (bce(m.p_z1(z0), z1) + pixel_nll(m, m.p_x(z1), x)).mean()
    opt_p.zero_grad()
    p_loss.backward()
    opt_p.step()
    with torch.no_grad():
        z0 = torch.bernoulli(torch.full((len(x), m.nz0), 0.5))
        z1 = torch.bernoulli(torch.sigmoid(m.p_z1(z0)))
        xp = pixel_sample(m, m.p_x(z1))
    a0, a1 = ladder_scores(m, xp)
    q_loss = (bce(a0, z0) + bce(m.p_z1(z0).detach() + a1, z1)).mean()
    opt_q.zero_grad()
    q_loss.backward()
    opt_q.step()
    return p_loss.item(), q_loss.item()


def zgr(logits):
    """Straight-through form of ZGR: value b, gradient J * d logits."""
    p = torch.sigmoid(logits)
    b = torch.bernoulli(p.detach())
    jac = ((b * (1 - p) + (1 - b) * p) / 2).detach()
    return b + jac * (logits - logits.detach())


def kl(q_logits, p_logits):
    # Written in SPEC's order of operations: Adam's first step divides each gradient by its
    # own size, so components whose true gradient is ~0 would amplify mere rounding.
    q = torch.sigmoid(q_logits) * (1 - 1e-6) + 0.5e-6
    p = torch.sigmoid(p_logits) * (1 - 1e-6) + 0.5e-6
    return (q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())).sum(1)


def plain_elbo_step(m, x, opt):
    a0, a1 = ladder_scores(m, x)
    z0 = zgr(a0)
    prior1 = m.p_z1(z0)
    z1 = zgr(prior1 + a1)
    loss = (pixel_nll(m, m.p_x(z1), x) + kl(a0, torch.zeros_like(a0))
            + kl(prior1 + a1, prior1)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def fresh(name: str):
    torch.manual_seed(SEED)
    model = load_model_class(name)(NZ0, NZ1)
    x = torch.rand(BS, 1, 28, 28)
    if model.pixels.binary:
        x = (x > 0.5).float()
    return model, x


def param_change(before, after):
    return [a.detach() - b.detach() for b, a in zip(before.parameters(), after.parameters())]


def assert_close_lists(xs, ys):
    for a, b in zip(xs, ys, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def plain_losses(method, ref, x):
    """The plain step on `ref`: the total p and q losses (sym) or the negative ELBO."""
    if method == "sym":
        return plain_sym_step(ref, x, torch.optim.Adam(ref.p_parameters(), lr=LR),
                              torch.optim.Adam(ref.q_parameters(), lr=LR))
    return (plain_elbo_step(ref, x, torch.optim.Adam(ref.parameters(), lr=LR)),)


def totals(method, logs):
    """The library's logged per-component losses, back to totals as plain_losses gives them."""
    v = {k: t.item() for k, t in logs.items()}
    if method == "sym":
        return (v["ploss1"] * NZ1 + v["plossx"] * 784, v["qloss0"] * NZ0 + v["qloss1"] * NZ1)
    return (v["dloss"] * 784 + v["kl0loss"] * NZ0 + v["kl1loss"] * NZ1,)


@pytest.mark.parametrize("method", ["sym", "elbo"])
@pytest.mark.parametrize("name", LADDERS)
def test_learning_step_equals_plain_step(name, method):
    """Same losses (to 1e-6 relative) and the same Adam change of every parameter (to 1e-6)."""
    runtime.configure(torch.device("cpu"))
    model, x = fresh(name)
    start, ref = copy.deepcopy(model), copy.deepcopy(model)
    learner = LEARNERS[method](model, LR)
    torch.manual_seed(SEED + 1)
    logs, _ = learner.step(x)
    torch.manual_seed(SEED + 1)
    expected = plain_losses(method, ref, x)
    assert totals(method, logs) == pytest.approx(expected, rel=1e-6)
    assert_close_lists(param_change(start, model), param_change(start, ref))
    assert any(d.abs().max() > LR / 2 for d in param_change(start, model))  # the step did move


# --- statistics and sampler in expectation -------------------------------------------------
def entropy(p):
    p = p * (1 - 1e-6) + 0.5e-6
    return -(p * p.log() + (1 - p) * (1 - p).log())


@pytest.mark.parametrize("name", LADDERS)
def test_fused_q_statistics_equal_a_separate_encoder_pass(name):
    """q statistics from sample_q's logits vs a third encoder pass with its own draws of z0."""
    model, x = fresh(name)
    draws = 400
    fused_m, fused_h, plain_m, plain_h = 0, 0, 0, 0
    with torch.no_grad():
        for _ in range(draws):
            _, logits = model.sample_q(x)  # what the training loop feeds the statistics
            p = torch.sigmoid(logits["q1"])
            fused_m, fused_h = fused_m + p.mean(0), fused_h + entropy(p).mean(0)
            a0, a1 = ladder_scores(model, x)  # the authors' separate pass, fresh z0
            torch.testing.assert_close(logits["q0"], a0, atol=1e-6, rtol=0)
            z0 = torch.bernoulli(torch.sigmoid(a0))
            p = torch.sigmoid(model.p_z1(z0) + a1)
            plain_m, plain_h = plain_m + p.mean(0), plain_h + entropy(p).mean(0)
    # per bit: marginal probability and mean conditional entropy agree up to sampling noise
    # (each is a mean of 400 x 16 terms in [0, 1]; 0.05 is beyond 5 standard errors)
    assert (fused_m / draws - plain_m / draws).abs().max() < 0.05
    assert (fused_h / draws - plain_h / draws).abs().max() < 0.05


def test_batch_sampler_is_uniform_without_repeats():
    n, bs, draws = 50, 8, 5000
    data = DeviceData(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28), 1.0)
    torch.manual_seed(SEED)
    counts = torch.zeros(n)
    for _ in range(draws):
        ids = data.batch(bs)[:, 0, 0, 0].long()
        assert len(ids.unique()) == bs
        counts += torch.bincount(ids, minlength=n)
    expected = draws * bs / n  # 800 per image; binomial sd ~ 26
    assert (counts - expected).abs().max() < 6 * math.sqrt(expected)


# --- the benchmark runs end to end (figures are printed, not checked) --------------------------
def test_bench_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--experiments", "mnist-ladder", "--bs", "4", "--iters", "1", "--warmup", "0",
                "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [(r["experiment"], r["method"]) for r in result["results"]] == \
        [("mnist-ladder", "sym"), ("mnist-ladder", "elbo")]
    assert all(r["gflop"] > 0 and r["seconds"] > 0 for r in result["results"])
    assert "| mnist-ladder | sym | eager |" in capsys.readouterr().out


def test_authors_ratios_are_taken_within_the_run():
    """Their median over ours, over all repetitions and per repetition (wall, CPU)."""
    row = bench.with_authors({}, authors=[([2.0, 2.0], [4.0, 4.0]), ([3.0], [6.0])],
                             ours=[([1.0], [2.0]), ([1.0], [3.0])])
    assert row["ratio"] == 2.0 and row["ratios"] == [2.0, 3.0]
    assert row["cpu_ratio"] == 4.0 / 2.5
    table = bench.markdown([{**row, "experiment": "e", "method": "sym", "compile": False,
                             "seconds": 1.0, "it_per_s": 1.0, "cpu_seconds": 2.5,
                             "gflop": 1.0, "gflop_per_s": 1.0}], peak=10.0)
    assert "| 2.00x | 2.00, 3.00 | 1.60x |" in table


def test_png_writer_writes_what_save_image_writes():
    result = bench.bench_png(40, workers=1)
    assert result["first_100_same_pixels"]


def test_malloc_setting_is_accepted_on_glibc():
    if runtime._libc() is None:
        pytest.skip("not glibc")
    assert runtime.malloc_keep_memory(True)


def test_png_encoder_round_trips_grey_levels(tmp_path):
    from PIL import Image

    from symvae.evaluate.png import write_grey
    images = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8).numpy()
    assert write_grey(str(tmp_path), 10, images) == 3
    for i, img in enumerate(images):
        with Image.open(tmp_path / f"img_{10 + i:05d}.png") as png:
            assert png.mode == "L" and (np.asarray(png) == img).all()
