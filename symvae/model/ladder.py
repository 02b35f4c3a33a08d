"""The ladder encoder q(z0|x) q(z1|z0,x) (direct order), shared by both ladder experiments.

A deterministic network R maps x to additive scores (a0, a1):
q(z0|x) has logits 0 + a0, q(z1|z0,x) has logits p_z1(z0) + a1, re-using the
decoder's p(z1|z0) network, which is detached in the q-step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from symvae.model.distributions import bernoulli_kl, bernoulli_nll, sample_bernoulli, zgr_sample
from symvae.model.hvae import HVAE, Latents, Logs
from symvae.model.nets import image_trunk, mlp


class LadderHVAE(HVAE):
    sym_names = ("ploss1", "plossx", "qloss0", "qloss1", "pmi1", "qmi0", "qmi1")
    elbo_names = ("dloss", "kl0loss", "kl1loss", "pmi1", "qmi0", "qmi1")
    mi_names = ("p1", "q0", "q1")

    def __init__(self, nz0: int, nz1: int, trunk: nn.Module | None = None, **decoder):
        """`trunk` maps x to `width` features (default: the image trunk of SPEC §2);
        `decoder` goes to HVAE.__init__."""
        super().__init__(nz0, nz1, **decoder)
        width, act = self.width, self.act
        self.r_trunk = image_trunk(width, act) if trunk is None else trunk
        self.r_a1 = nn.Linear(width, nz1)
        self.r_a0 = mlp(width, nz0, width, 2, act)
        self.r_a0_skip = nn.Linear(nz1, nz0, bias=False)

    def scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """R(x) = (a0, a1): additive scores of q(z0|x) and q(z1|z0,x)."""
        h = self.r_trunk(x)
        a1 = self.r_a1(h)
        return self.r_a0(h) + self.r_a0_skip(a1), a1

    def sample_q(self, x: Tensor) -> tuple[Latents, Logs]:
        a0, a1 = self.scores(x)
        z0 = sample_bernoulli(a0)
        l1 = self.p_z1(z0) + a1
        return (z0, sample_bernoulli(l1)), {"q0": a0, "q1": l1}

    def nll_p(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        n1, nx = self.nll_p_terms(z, x)
        return (n1 + nx).mean(), {"ploss1": n1.mean() / self.nz1, "plossx": self.per_pixel(nx)}

    def nll_q_terms(self, z: Latents, x: Tensor) -> tuple[Tensor, Tensor]:
        """(-log q(z0|x), -log q(z1|z0,x)) per sample; p(z1|z0)'s share carries no gradient."""
        z0, z1 = z
        a0, a1 = self.scores(x)
        return bernoulli_nll(a0, z0), bernoulli_nll(self.p_z1(z0).detach() + a1, z1)

    def nll_q(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        n0, n1 = self.nll_q_terms(z, x)
        return (n0 + n1).mean(), {"qloss0": n0.mean() / self.nz0, "qloss1": n1.mean() / self.nz1}

    def elbo_loss(self, x: Tensor, latents: Latents | None = None) -> tuple[Tensor, Logs, Logs]:
        fixed = latents or (None, None)
        a0, a1 = self.scores(x)
        z0 = zgr_sample(a0, fixed[0])
        prior1 = self.p_z1(z0)
        l1 = prior1 + a1
        z1 = zgr_sample(l1, fixed[1])
        data = self.pixels.nll(self.p_x(z1), x)
        kl0 = bernoulli_kl(a0, a0.new_zeros(())).sum(1)
        kl1 = bernoulli_kl(l1, prior1).sum(1)
        logs = {"dloss": self.per_pixel(data), "kl0loss": kl0.mean() / self.nz0,
                "kl1loss": kl1.mean() / self.nz1}
        with torch.no_grad():  # p(z1|z0) at z0 ~ p(z0), for the pmi1 statistic only
            p1 = self.p_z1(self.sample_z0(len(x)))
        return (data + kl0 + kl1).mean(), logs, {"p1": p1, "q0": a0, "q1": l1}
