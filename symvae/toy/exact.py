"""Exact figures of a model small enough to enumerate every (z0, z1, x).

  P[z, x] = p(z0) p(z1|z0) p(x|z1)        the decoder's joint
  Q[z, x] = q(z0, z1|x) pi(x)             the encoder's joint with the data law
At the equilibrium of symmetric learning P = Q; then p(x) = pi(x), and pi is the
stationary law of the limiting chain x -> z ~ q(z|x) -> x' ~ p(x'|z).
Everything is computed in float64 on the CPU from the model's own
log-likelihoods (`nll_p_terms`, `nll_q_terms`), so no sampling is involved.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from symvae.model.hvae import HVAE

# Figures of `evaluate`, in print order: name -> what it measures.
FIGURES = {
    "tv_joint": "TV(q(z|x)pi(x), p(z,x))",
    "kl_qp": "KL(q(z|x)pi(x) || p(z,x))",
    "kl_pq": "KL(p(z,x) || q(z|x)pi(x))",
    "tv_marginal": "TV(p(x), pi(x))",
    "kl_marginal": "KL(pi(x) || p(x))",
    "tv_one_step": "TV(pi T, pi): how far one chain step started in pi moves it",
    "tv_stationary": "TV(s(x), pi(x)), s = stationary law of the limiting chain T",
    "kl_stationary": "KL(pi(x) || s(x))",
    "gap": "1 - |second eigenvalue of T|: slow mixing makes s sensitive to small errors",
}


def all_bits(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Every n-bit pattern, [2^n, n]; row i holds i's binary digits, most significant first."""
    i = torch.arange(2 ** n)
    return ((i[:, None] >> torch.arange(n - 1, -1, -1)) & 1).to(dtype)


def joints(model: HVAE, pi: Tensor) -> tuple[Tensor, Tensor]:
    """(P, Q) as [2^(nz0+nz1), 2^nx] float64 tables; z's index holds z0's bits, then z1's.

    `model` needs nz0, nz1, nx (bits of x) and takes x as [B, nx]; pi is [2^nx].
    """
    m = copy.deepcopy(model).to("cpu", torch.float64)
    nz, nx = m.nz0 + m.nz1, m.nx
    z, x = all_bits(nz), all_bits(nx)
    zz, xx = z.repeat_interleave(len(x), 0), x.repeat(len(z), 1)
    latents = (zz[:, :m.nz0], zz[:, m.nz0:])
    with torch.no_grad():
        log_p = -m.nz0 * math.log(2.0) - sum(m.nll_p_terms(latents, xx))
        log_q = -sum(m.nll_q_terms(latents, xx))
    shape = (len(z), len(x))
    return log_p.exp().view(shape), log_q.exp().view(shape) * pi.to(torch.float64)


def tv(a: Tensor, b: Tensor) -> float:
    """Total variation distance 1/2 sum |a - b| of two distributions on the same set."""
    return 0.5 * float((a - b).abs().sum())


def kl(a: Tensor, b: Tensor) -> float:
    """KL(a || b) = sum a log(a/b), in nats (0 log 0 = 0; inf where b = 0 < a)."""
    return float((torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum())


def chain_matrix(p_joint: Tensor, q_joint: Tensor) -> Tensor:
    """T[x, x'] = sum_z q(z|x) p(x'|z): the limiting chain's transition matrix, [2^nx, 2^nx]."""
    q_z_given_x = q_joint / q_joint.sum(0, keepdim=True)
    p_x_given_z = p_joint / p_joint.sum(1, keepdim=True)
    return q_z_given_x.T @ p_x_given_z


def stationary(transition: Tensor) -> Tensor:
    """The stationary law s = s T of an irreducible chain, by solving (T' - I) s = 0, sum s = 1."""
    n = len(transition)
    a = transition.T - torch.eye(n, dtype=transition.dtype)
    a[-1] = 1.0  # one balance equation is redundant; normalisation replaces it
    b = torch.zeros(n, dtype=transition.dtype)
    b[-1] = 1.0
    return torch.linalg.solve(a, b)


def spectral_gap(transition: Tensor) -> float:
    """1 - |lambda_2| of a stochastic matrix (the largest eigenvalue is 1)."""
    moduli = torch.linalg.eigvals(transition).abs().sort(descending=True).values
    return 1.0 - float(moduli[1])


def evaluate(model: HVAE, pi: Tensor) -> dict[str, float]:
    """The FIGURES of `model` against the data law pi, computed exactly."""
    p, q = joints(model, pi)
    t = chain_matrix(p, q)
    p_x, s = p.sum(0), stationary(t)
    pi = pi.to(torch.float64)
    return {"tv_joint": tv(q, p), "kl_qp": kl(q, p), "kl_pq": kl(p, q),
            "tv_marginal": tv(p_x, pi), "kl_marginal": kl(pi, p_x),
            "tv_one_step": tv(pi @ t, pi), "tv_stationary": tv(s, pi),
            "kl_stationary": kl(pi, s), "gap": spectral_gap(t)}
