"""Pixel models p(x|z1): how decoder outputs become likelihoods, samples and images."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from symvae.model.distributions import bernoulli, bernoulli_nll, full, gaussian_nll


class BernoulliPixels(nn.Module):
    """Binary pixels; the decoder outputs logits."""

    binary = True
    grid_noisy_data = False  # the training grid's first row: the batch before its noise

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z1) summed over pixels -> [B]."""
        return bernoulli_nll(out, x)

    def sample(self, out: Tensor) -> Tensor:
        return bernoulli(torch.sigmoid(full(out)))

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(full(out))

    def export(self, out: Tensor) -> Tensor:
        """The image written for FID: thresholded at logit 0 (the authors' ladder scripts)."""
        return (out > 0).to(out.dtype)

    def chain_rows(self, sample: Tensor, mean: Tensor) -> list[Tensor]:
        return [mean]


class HalfProbabilityPixels(BernoulliPixels):
    """Binary pixels written for FID as sigmoid(logits) > 1/2 (the authors' reverse scripts).

    The same as logits > 0 except where float32's sigmoid rounds to exactly 1/2
    (|logit| below about 3e-8).
    """

    def export(self, out: Tensor) -> Tensor:
        return (torch.sigmoid(out) > 0.5).to(out.dtype)


class GaussianPixels(nn.Module):
    """Grey pixels x ~ N(mu(z1), sigma^2); one learned log sigma, part of p."""

    binary = False
    grid_noisy_data = True  # the training grid's first row: the batch with its noise

    def __init__(self) -> None:
        super().__init__()
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        return gaussian_nll(out, self.log_sigma, x)

    def sample(self, out: Tensor) -> Tensor:
        return out + self.log_sigma.exp() * torch.randn_like(out)

    def mean(self, out: Tensor) -> Tensor:
        return out

    def export(self, out: Tensor) -> Tensor:
        return out.clamp(0, 1)

    def chain_rows(self, sample: Tensor, mean: Tensor) -> list[Tensor]:
        return [sample.clamp(0, 1), mean.clamp(0, 1)]
