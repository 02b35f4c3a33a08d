"""The mnist-ladder model: layer shapes, log terms, and which parameters each step moves."""
from __future__ import annotations

import pytest
import torch

from symvae.experiment import load_model_class
from symvae.learn.rules import ElboLearner, SymmetricLearner
from symvae.model.nets import image_trunk, pixel_decoder

NZ0, NZ1 = 5, 12


@pytest.fixture(scope="module")
def hvae_cls():
    return load_model_class("mnist-ladder")


def model(hvae_cls):
    torch.manual_seed(0)
    return hvae_cls(NZ0, NZ1)


def test_image_trunk_output_sizes_follow_the_spec_table():
    x = torch.zeros(2, 1, 28, 28)
    sizes = []
    for layer in image_trunk(600, "tanh"):
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            sizes.append((x.shape[1], x.shape[2]))
    assert sizes == [(32, 28), (32, 27), (64, 13), (64, 11), (64, 9), (128, 4), (600, 1)]
    assert x.shape == (2, 600)


def test_pixel_decoder_output_sizes_follow_the_spec_table():
    x = torch.zeros(2, NZ1)
    sizes = []
    for layer in pixel_decoder(NZ1, "tanh"):
        x = layer(x)
        if isinstance(layer, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
            sizes.append((x.shape[1], x.shape[2]))
    assert sizes == [(128, 4), (64, 9), (64, 11), (64, 13), (32, 27), (32, 28), (1, 28)]


def test_ladder_heads_and_widths(hvae_cls):
    m = model(hvae_cls)
    assert m.r_a1.in_features == 600 and m.r_a1.out_features == NZ1
    assert m.r_a0_skip.bias is None and m.p_z1.skip.bias is None
    assert all(isinstance(a, torch.nn.Tanh) for a in m.modules()
               if isinstance(a, (torch.nn.Tanh, torch.nn.ReLU)))
    a0, a1 = m.scores(torch.rand(3, 1, 28, 28))
    assert a0.shape == (3, NZ0) and a1.shape == (3, NZ1)
    (z0, z1), x, logits = m.sample_p(3)
    assert z0.shape == (3, NZ0) and z1.shape == (3, NZ1) and x.shape == (3, 1, 28, 28)
    assert logits["p1"].shape == (3, NZ1)


def test_parameter_groups_partition_the_model(hvae_cls):
    m = model(hvae_cls)
    p, q = {id(t) for t in m.p_parameters()}, {id(t) for t in m.q_parameters()}
    assert not p & q and p | q == {id(t) for t in m.parameters()}
    assert {id(t) for t in m.p_z1.parameters()} <= p  # shared z1|z0 network belongs to p


def test_log_terms_are_per_component_means(hvae_cls):
    m = model(hvae_cls)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    z, _ = m.sample_q(x)
    loss, logs = m.nll_p(z, x)
    assert set(logs) == {"ploss1", "plossx"}
    n1, nx = m.nll_p_terms(z, x)
    assert torch.allclose(logs["ploss1"], n1.mean() / NZ1)
    assert torch.allclose(logs["plossx"], nx.mean() / 784)
    assert torch.allclose(loss, (n1 + nx).mean())
    _, qlogs = m.nll_q(z, x)
    assert set(qlogs) == {"qloss0", "qloss1"}
    _, elogs, stat = m.elbo_loss(x)
    assert set(elogs) == {"dloss", "kl0loss", "kl1loss"} and set(stat) == {"p1", "q0", "q1"}


def changed(before: dict, m: torch.nn.Module) -> set[str]:
    return {n for n, t in m.named_parameters() if not torch.equal(before[n], t)}


def snapshot(m):
    return {n: t.detach().clone() for n, t in m.named_parameters()}


def test_p_step_moves_p_only_and_q_step_moves_r_only(hvae_cls):
    m = model(hvae_cls)
    learner = SymmetricLearner(m, 1e-3)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))
    p_names = {n for n, t in m.named_parameters() if any(t is s for s in m.p_parameters())}
    before = snapshot(m)
    with torch.no_grad():
        z, _ = m.sample_q(x)
    loss, _ = m.nll_p(z, x)
    learner.opt_p.zero_grad()
    loss.backward()
    learner.opt_p.step()
    assert changed(before, m) == p_names

    before = snapshot(m)
    with torch.no_grad():
        z, xp, _ = m.sample_p(8)
    loss, _ = m.nll_q(z, xp)
    m.zero_grad(set_to_none=True)
    loss.backward()
    assert all(t.grad is None for t in m.p_z1.parameters())  # decoder term detached
    learner.opt_q.step()
    assert changed(before, m) == {n for n, _ in m.named_parameters()} - p_names
    assert all(n.startswith("r_") for n in changed(before, m))


def test_full_symmetric_iteration_moves_everything(hvae_cls):
    m = model(hvae_cls)
    before = snapshot(m)
    logs, logits = SymmetricLearner(m, 1e-3).step(torch.bernoulli(torch.full((8, 1, 28, 28), .3)))
    assert set(logs) == {"ploss1", "plossx", "qloss0", "qloss1"}
    assert set(logits) == {"p1", "q0", "q1"}
    assert changed(before, m) == set(before)


def test_elbo_step_moves_every_parameter(hvae_cls):
    m = model(hvae_cls)
    before = snapshot(m)
    ElboLearner(m, 1e-3).step(torch.bernoulli(torch.full((8, 1, 28, 28), 0.3)))
    assert changed(before, m) == set(before)
