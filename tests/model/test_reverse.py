"""mnist-reverse: the reverse encoder q(z1|x) q(z0|z1), its losses, and the folder's scripts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from experiment_runs import assert_only_changed, data_loss_windows, end_to_end
from torch import nn

from symvae.experiment import load_model_class
from symvae.learn.rules import ElboLearner, SymmetricLearner

NZ0, NZ1, B = 5, 7, 4
X = torch.bernoulli(torch.full((B, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))
HVAE = load_model_class("mnist-reverse")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HVAE(NZ0, NZ1)


def log_bernoulli(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """sum_i v_i log sigmoid(l_i) + (1 - v_i) log sigmoid(-l_i), per sample."""
    return (value * F.logsigmoid(logits) + (1 - value) * F.logsigmoid(-logits)).sum(1)


def test_network_shapes(model):
    assert model.q_trunk(X).shape == (B, 600)
    assert model.q_z1_logits(X).shape == (B, NZ1)
    linears = [m for m in model.q_z0.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(NZ1, 600), (600, 600), (600, 600), (600, NZ0)]
    assert all(isinstance(m, nn.Tanh) for m in model.q_z0.mlp if not isinstance(m, nn.Linear))
    assert model.q_z0.skip.weight.shape == (NZ0, NZ1) and model.q_z0.skip.bias is None
    assert model.q_z0(torch.zeros(B, NZ1)).shape == (B, NZ0)
    q_modules = {"q_trunk", "q_z1", "q_z0"}
    q_names = {n for n, _ in model.named_parameters() if n.split(".")[0] in q_modules}
    assert {id(p) for p in model.q_parameters()} == \
        {id(p) for n, p in model.named_parameters() if n in q_names}
    assert not {id(p) for p in model.p_parameters()} & {id(p) for p in model.q_parameters()}


def test_samples_are_bits(model):
    (z0, z1), logits = model.sample_q(X)
    assert z0.shape == (B, NZ0) and z1.shape == (B, NZ1)
    assert set(torch.cat([z0, z1], 1).unique().tolist()) <= {0.0, 1.0}
    assert logits["q1"].shape == (B, NZ1) and logits["q0"].shape == (B, NZ0)
    assert HVAE.mi_names == ()


def test_single_sample_kl_formula(model):
    torch.manual_seed(2)
    l0, l1 = 3 * torch.randn(B, NZ0), 3 * torch.randn(B, NZ1)
    z0, z1 = torch.bernoulli(torch.full((B, NZ0), 0.5)), torch.bernoulli(torch.full((B, NZ1), 0.5))
    with torch.no_grad():
        expected = (log_bernoulli(l1, z1) + log_bernoulli(l0, z0) + NZ0 * 0.6931
                    - log_bernoulli(model.p_z1(z0), z1))
        got = model.single_sample_kl((z0, z1), l0, l1)
    torch.testing.assert_close(got, expected)


def test_elbo_loss_is_data_term_plus_kl_at_its_samples(model):
    """Replaying the ZGR draws with the same seed gives the logged terms and the loss."""
    torch.manual_seed(3)
    loss, logs, _ = model.elbo_loss(X)
    torch.manual_seed(3)
    with torch.no_grad():
        l1 = model.q_z1(model.q_trunk(X))
        z1 = torch.bernoulli(torch.sigmoid(l1))
        l0 = model.q_z0(z1)
        z0 = torch.bernoulli(torch.sigmoid(l0))
        data = -log_bernoulli(model.p_x(z1).flatten(1), X.flatten(1))
        kl = (log_bernoulli(l1, z1) + log_bernoulli(l0, z0) + NZ0 * 0.6931
              - log_bernoulli(model.p_z1(z0), z1))
    torch.testing.assert_close(loss.detach(), (data + kl).mean())
    torch.testing.assert_close(logs["dloss"].detach(), data.mean() / 784)
    torch.testing.assert_close(logs["klloss"].detach(), kl.mean() / (NZ0 + NZ1))


def test_sym_losses_are_normalised_per_component(model):
    with torch.no_grad():
        z, _ = model.sample_q(X)
        p_loss, p_logs = model.nll_p(z, X)
        q_loss, q_logs = model.nll_q(z, X)
        z0, z1 = z
        nll_p = -(log_bernoulli(model.p_z1(z0), z1)
                  + log_bernoulli(model.p_x(z1).flatten(1), X.flatten(1)))
        nll_q = -(log_bernoulli(model.q_z1_logits(X), z1) + log_bernoulli(model.q_z0(z1), z0))
    torch.testing.assert_close(p_loss, nll_p.mean())
    torch.testing.assert_close(p_logs["ploss"], nll_p.mean() / (784 + NZ1))
    torch.testing.assert_close(q_loss, nll_q.mean())
    torch.testing.assert_close(q_logs["qloss"], nll_q.mean() / (NZ0 + NZ1))


def test_q_step_changes_only_the_encoder(model):
    learner = SymmetricLearner(model, stepsize=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        z, x_p, _ = model.sample_p(B)
    loss, _ = model.nll_q(z, x_p)
    learner.opt_q.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in model.p_parameters())
    learner.opt_q.step()
    q_ids = {id(p) for p in model.q_parameters()}
    assert_only_changed(before, model, {n for n, p in model.named_parameters() if id(p) in q_ids})


def test_elbo_step_moves_encoder_and_decoder(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ElboLearner(model, stepsize=1e-3).step(X)
    assert_only_changed(before, model, set(before))


@pytest.mark.parametrize("method,names", [("sym", ("ploss", "qloss")),
                                          ("elbo", ("dloss", "klloss"))])
def test_end_to_end(experiment_copy, data_root, method, names):
    end_to_end(experiment_copy("mnist-reverse"), method, data_root, names, mi_bits={},
               grid_rows=4, binary=True)


@pytest.mark.slow
def test_real_data_elbo_lowers_data_loss(experiment_copy):
    first, last = data_loss_windows(experiment_copy("mnist-reverse"), "elbo", "dloss")
    assert last < 0.8 * first, (first, last)
