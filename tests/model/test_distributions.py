"""Likelihoods, ZGR, KL and entropy against hand computations and torch.distributions."""
from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, kl_divergence

from symvae.model.distributions import (
    MIX,
    bernoulli_kl,
    bernoulli_nll,
    binary_entropy,
    gaussian_nll,
    zgr_sample,
)


def test_bernoulli_nll_equals_hand_bce_sum():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 3.0, -2.0]])
    value = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    p = torch.sigmoid(logits)
    hand = -(value * p.log() + (1 - value) * (1 - p).log()).sum(1)
    assert torch.allclose(bernoulli_nll(logits, value), hand, atol=1e-6)
    # first row by hand: log(1+e^-2) + log(1+e^-1) + log 2
    row0 = math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)
    assert abs(bernoulli_nll(logits, value)[0].item() - row0) < 1e-6


def test_bernoulli_nll_sums_over_image_dimensions():
    logits, value = torch.zeros(4, 1, 28, 28), torch.ones(4, 1, 28, 28)
    assert torch.allclose(bernoulli_nll(logits, value), torch.full((4,), 784 * math.log(2)))


def test_gaussian_nll_formula():
    mu = torch.tensor([[0.2, 0.5]])
    x = torch.tensor([[0.0, 1.0]])
    log_sigma = torch.tensor(-1.0)
    s2 = math.exp(-2.0)
    hand = sum(0.91894 - 1.0 + (a - b) ** 2 / (2 * s2)
               for a, b in ((0.0, 0.2), (1.0, 0.5)))
    assert abs(gaussian_nll(mu, log_sigma, x).item() - hand) < 1e-5


def test_zgr_forward_mean_is_the_probability():
    """By Monte Carlo: the forward value is a Bernoulli(sigmoid(logits)) sample."""
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    draws = zgr_sample(logits.expand(100_000, 5))
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    # 5 standard errors of a mean of 1e5 bits are at most 0.008
    torch.testing.assert_close(draws.mean(0), torch.sigmoid(logits), atol=0.008, rtol=0)


def test_zgr_gradient_is_unbiased_for_a_linear_function():
    """For f(b) = c*b, E[f] = c*p with p = sigmoid(l), so d/dl E[f] = c*p*(1-p); the mean ZGR
    gradient over many draws must equal it (ZGR is exact for linear functions)."""
    torch.manual_seed(1)
    c = torch.tensor([3.0, -1.5, 0.7, 2.0])
    logits = torch.tensor([-1.0, 0.0, 0.5, 2.5])
    draws = 200_000
    batch = logits.expand(draws, 4).clone().requires_grad_(True)
    (zgr_sample(batch) * c).sum().backward()
    mean_grad = batch.grad.mean(0)
    p = torch.sigmoid(logits)
    exact = c * p * (1 - p)
    # per draw the gradient lies within |c|/2; 5 standard errors of the mean bound the gap
    torch.testing.assert_close(mean_grad, exact, atol=float(5 * c.abs().max() / 2 / draws**0.5),
                               rtol=0)
    # a biased estimator fails the same test: the straight-through gradient c * 1 is off
    assert (c - mean_grad).abs().min() > 0.1


def test_bernoulli_kl_matches_torch_distributions():
    torch.manual_seed(2)
    q, p = torch.randn(50) * 3, torch.randn(50) * 3
    mix = lambda logit: torch.sigmoid(logit) * (1 - MIX) + 0.5 * MIX
    expected = kl_divergence(Bernoulli(probs=mix(q)), Bernoulli(probs=mix(p)))
    assert torch.allclose(bernoulli_kl(q, p), expected, atol=1e-5)
    assert torch.allclose(bernoulli_kl(q, q), torch.zeros(50), atol=1e-6)


def test_binary_entropy_matches_torch_distributions():
    prob = torch.linspace(0.01, 0.99, 33)
    mixed = prob * (1 - MIX) + 0.5 * MIX
    assert torch.allclose(binary_entropy(prob), Bernoulli(probs=mixed).entropy(), atol=1e-6)
    assert abs(binary_entropy(torch.tensor(0.5)).item() - math.log(2)) < 1e-7
    assert binary_entropy(torch.tensor(0.0)).item() < 1e-4  # finite thanks to the mixing


def test_zgr_with_a_given_sample_returns_it_and_its_j_gradient():
    logits = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    given = torch.tensor([1.0, 0.0, 1.0])
    b = zgr_sample(logits, given)
    assert torch.equal(b, given)
    b.sum().backward()
    p = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, (given * (1 - p) + (1 - given) * p) / 2)
