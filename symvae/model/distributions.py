"""Bernoulli log-likelihoods, sampling, the ZGR estimator, binary KL and entropy.

Every Bernoulli variable is given by its logits ("scores"). Negative
log-likelihoods are summed over all components of a sample and returned per
sample, so that callers decide how to average over the batch. Everything here
computes in fp32 whatever the dtype of the logits (under the opt-in bf16
autocast they come as bf16): a bf16 log-probability near log 2 is off by up to
0.002, which biases small figures such as a KL term below zero. fp32 and fp64
inputs pass through `full` as they are, so the default arithmetic is as it was.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCED = (torch.bfloat16, torch.float16)


def full(t: Tensor) -> Tensor:
    """`t` in fp32 if it is in a reduced precision, else `t` itself (fp32 and fp64 stay)."""
    return t.float() if t.dtype in REDUCED else t


# Probabilities are mixed with this much of the uniform 1/2 before logs (SPEC §4, §5).
MIX = 1e-6
HALF_LOG_2PI = 0.91894  # the authors' rounded 0.5*log(2*pi), kept so the figures agree


def bernoulli_nll(logits: Tensor, value: Tensor) -> Tensor:
    """-log p(value) under Bernoulli(sigmoid(logits)), summed per sample -> [B]."""
    nll = F.binary_cross_entropy_with_logits(full(logits), full(value), reduction="none")
    return nll.flatten(1).sum(1)


def gaussian_nll(mean: Tensor, log_sigma: Tensor, value: Tensor) -> Tensor:
    """-log N(value; mean, sigma^2) with one scalar log sigma, summed per sample -> [B].

    Per component 0.91894 + log sigma + (value - mean)^2 / (2 sigma^2), with 0.5*log(2*pi)
    rounded as in the authors' code (HALF_LOG_2PI).
    """
    sq = (full(value) - full(mean)).square() * torch.exp(-2.0 * log_sigma)
    per = HALF_LOG_2PI + log_sigma + 0.5 * sq
    return per.flatten(1).sum(1)


def bernoulli(prob: Tensor) -> Tensor:
    """torch.bernoulli, with NaN probabilities drawn as 0 instead of failing (a device assert
    on CUDA that ends the process). The same draws for every finite input; a NaN weight
    still shows as a NaN loss, which the trainer stops on (exit 3)."""
    return torch.bernoulli(full(prob).nan_to_num(0.0))


def sample_bernoulli(logits: Tensor) -> Tensor:
    """A Bernoulli sample (0./1.) with probabilities sigmoid(logits); no gradient."""
    return bernoulli(torch.sigmoid(full(logits.detach())))


class _ZGR(torch.autograd.Function):
    """Forward: the sample b. Backward: upstream gradient times J = (b(1-p) + (1-b)p)/2."""

    @staticmethod
    def forward(ctx, logits: Tensor, sample: Tensor | None) -> Tensor:  # type: ignore[override]
        p = torch.sigmoid(logits)
        b = bernoulli(p) if sample is None else sample.detach().to(p.dtype)
        ctx.save_for_backward(b, p)
        return b

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        b, p = ctx.saved_tensors
        return grad * (b * (1 - p) + (1 - b) * p) * 0.5, None


def zgr_sample(logits: Tensor, sample: Tensor | None = None) -> Tensor:
    """Bernoulli sample with the ZGR gradient estimator for its logits.

    `sample` (0./1., the logits' shape) is taken as the drawn value instead of a
    fresh draw, so a gradient can be checked on fixed samples.
    """
    return _ZGR.apply(full(logits), sample)


def mixed_prob(logits: Tensor) -> Tensor:
    """sigmoid(logits) mixed with MIX of 1/2, safe for logs."""
    return torch.sigmoid(full(logits)) * (1 - MIX) + 0.5 * MIX


def bernoulli_kl(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    """Per-component KL(Bernoulli(q) || Bernoulli(p)), same shape as the logits."""
    q, p = mixed_prob(q_logits), mixed_prob(p_logits)
    return q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())


def binary_entropy(prob: Tensor) -> Tensor:
    """Per-component entropy H(prob) in nats; prob is mixed with MIX of 1/2 first."""
    prob = prob * (1 - MIX) + 0.5 * MIX
    return -(prob * prob.log() + (1 - prob) * (1 - prob).log())
