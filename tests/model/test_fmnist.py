"""fmnist-ladder: encoder 1000 wide, p(z1|z0) 600 wide, ReLU decoder, Gaussian pixels with a
learned log sigma."""
from __future__ import annotations

import math

import pytest
import torch
from experiment_runs import TINY_NZ0, TINY_NZ1, data_loss_windows, end_to_end
from torch import nn

from symvae.experiment import load_model_class
from symvae.learn.rules import ElboLearner, SymmetricLearner
from symvae.model.pixels import GaussianPixels
from symvae.model.sampling import chain_start

NZ0, NZ1, B = 5, 7, 4
X = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(1))
HVAE = load_model_class("fmnist-ladder")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HVAE(NZ0, NZ1)


def test_network_shapes(model):
    assert model.r_trunk(X).shape == (B, 1000)
    a0, a1 = model.scores(X)
    assert a0.shape == (B, NZ0) and a1.shape == (B, NZ1)
    hidden = [m.out_features for m in model.p_z1.mlp if isinstance(m, nn.Linear)]
    assert hidden == [600, 600, NZ1]  # the authors' decoder MLP is 600 wide, as in MNIST
    assert [m.out_features for m in model.r_a0 if isinstance(m, nn.Linear)] == [1000, 1000, NZ0]
    decoder_acts = {type(m) for m in model.p_x if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d,
                                                                     nn.Unflatten))}
    assert decoder_acts == {nn.ReLU}
    assert {type(m) for m in model.p_z1.mlp if not isinstance(m, nn.Linear)} == {nn.Tanh}
    assert {type(m) for m in model.r_trunk if isinstance(m, (nn.ReLU, nn.Tanh))} == {nn.Tanh}
    assert model.p_x(torch.zeros(B, NZ1)).shape == (B, 1, 28, 28)


def test_parameter_count_is_the_authors():
    # the authors' fmnist-ladder HVAE(30, 100); a 1000-wide p(z1|z0) would give 5,865,344
    model = HVAE(30, 100)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 5_172_544


def test_log_sigma_starts_at_zero_and_belongs_to_p(model):
    log_sigma = model.pixels.log_sigma
    assert log_sigma.shape == () and log_sigma.item() == 0.0
    assert any(p is log_sigma for p in model.p_parameters())
    assert not any(p is log_sigma for p in model.q_parameters())


def test_gaussian_nll_formula():
    pixels = GaussianPixels()
    with torch.no_grad():
        pixels.log_sigma.fill_(0.3)
    torch.manual_seed(4)
    mu, x = torch.randn(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    sigma = math.exp(0.3)
    per_pixel = 0.91894 + 0.3 + (x - mu) ** 2 / (2 * sigma ** 2)
    torch.testing.assert_close(pixels.nll(mu, x), per_pixel.flatten(1).sum(1))


def test_sample_is_mean_plus_sigma_noise():
    pixels = GaussianPixels()
    with torch.no_grad():
        pixels.log_sigma.fill_(-1.0)
    mu = torch.rand(2, 1, 28, 28)
    torch.manual_seed(5)
    sample = pixels.sample(mu)
    torch.manual_seed(5)
    torch.testing.assert_close(sample, mu + math.exp(-1.0) * torch.randn_like(mu))


def test_export_clamps_means_and_chains_start_from_uniform_noise(model):
    pixels = GaussianPixels()
    out = torch.tensor([-0.5, 0.25, 1.5]).view(1, 1, 1, 3)
    assert pixels.export(out).flatten().tolist() == [0.0, 0.25, 1.0]
    torch.manual_seed(6)
    start = chain_start(model, HVAE.chain_start, 200)  # generate.py and the training grid
    assert start.shape == (200, 1, 28, 28)
    assert 0 <= start.min() and start.max() <= 1
    assert abs(start.mean().item() - 0.5) < 0.01 and abs(start.var().item() - 1 / 12) < 0.002
    sample, mean = torch.full((2, 1, 28, 28), 1.7), torch.full((2, 1, 28, 28), -0.2)
    assert [r.unique().tolist() for r in pixels.chain_rows(sample, mean)] == [[1.0], [0.0]]


def test_training_noise_is_gaussian():
    dataset = HVAE.dataset
    assert dataset.name == "FashionMNIST" and dataset.threshold is None
    torch.manual_seed(7)
    noisy = dataset.noise(torch.full((64, 1, 28, 28), 0.5)) - 0.5
    assert abs(noisy.std().item() - 0.01) < 0.0005 and abs(noisy.mean().item()) < 0.0005


def test_log_sigma_moves_with_p_step_and_elbo_not_q_step(model):
    log_sigma = model.pixels.log_sigma
    learner = SymmetricLearner(model, stepsize=1e-3)
    with torch.no_grad():
        z, x_p, _ = model.sample_p(B)
    q_loss, _ = model.nll_q(z, x_p)
    q_loss.backward()
    assert log_sigma.grad is None
    learner.opt_q.step()
    assert log_sigma.item() == 0.0

    with torch.no_grad():
        z, _ = model.sample_q(X)
    p_loss, _ = model.nll_p(z, X)
    p_loss.backward()
    learner.opt_p.step()
    after_p = log_sigma.item()
    assert after_p != 0.0

    ElboLearner(model, stepsize=1e-3).step(X)
    assert log_sigma.item() != after_p


@pytest.mark.parametrize("method,names", [
    ("sym", ("ploss1", "plossx", "qloss0", "qloss1", "pmi1", "qmi0", "qmi1")),
    ("elbo", ("dloss", "kl0loss", "kl1loss", "pmi1", "qmi0", "qmi1"))])
def test_end_to_end(experiment_copy, data_root, method, names):
    # The training grid has 5 rows: data, reconstructions, single shots, chain sample, chain mean.
    end_to_end(experiment_copy("fmnist-ladder"), method, data_root, names,
               mi_bits={"p1": TINY_NZ1, "q0": TINY_NZ0, "q1": TINY_NZ1}, grid_rows=5, binary=False)


@pytest.mark.slow
def test_real_data_sym_lowers_pixel_loss(experiment_copy):
    first, last = data_loss_windows(experiment_copy("fmnist-ladder"), "sym", "plossx")
    assert last < 0.97 * first, (first, last)
