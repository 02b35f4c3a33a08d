"""The reverse encoder q(z1|x) q(z0|z1) (Wake-Sleep order), used by mnist-reverse and the toy.

Two networks that share nothing with the decoder p: an image trunk with a
linear head gives the logits of q(z1|x); a SkipMLP gives those of q(z0|z1).
"""
from __future__ import annotations

from torch import Tensor, nn

from symvae.model.distributions import bernoulli_nll, sample_bernoulli, zgr_sample
from symvae.model.hvae import HVAE, Latents, Logs
from symvae.model.nets import SkipMLP, image_trunk

Q_Z0_HIDDEN = 3  # hidden layers of the q(z0|z1) network (SPEC §2)
LOG_2 = 0.6931  # the authors' rounded log 2 in the ELBO's -log p(z0); kept for equal figures


class ReverseHVAE(HVAE):
    sym_names = ("ploss", "qloss")
    elbo_names = ("dloss", "klloss")
    mi_names = ()

    def __init__(self, nz0: int, nz1: int, trunk: nn.Module | None = None,
                 q_z0_hidden: int = Q_Z0_HIDDEN, **decoder):
        """`trunk` maps x to `width` features (default: the image trunk of SPEC §2)."""
        super().__init__(nz0, nz1, **decoder)
        self.q_trunk = image_trunk(self.width, self.act) if trunk is None else trunk
        self.q_z1 = nn.Linear(self.width, nz1)
        self.q_z0 = SkipMLP(nz1, nz0, self.width, q_z0_hidden, self.act)

    def q_z1_logits(self, x: Tensor) -> Tensor:
        """Logits of q(z1|x)."""
        return self.q_z1(self.q_trunk(x))

    def sample_q(self, x: Tensor) -> tuple[Latents, Logs]:
        l1 = self.q_z1_logits(x)
        z1 = sample_bernoulli(l1)
        l0 = self.q_z0(z1)
        return (sample_bernoulli(l0), z1), {"q1": l1, "q0": l0}

    def nll_q_terms(self, z: Latents, x: Tensor) -> tuple[Tensor, Tensor]:
        """(-log q(z1|x), -log q(z0|z1)) per sample."""
        z0, z1 = z
        return bernoulli_nll(self.q_z1_logits(x), z1), bernoulli_nll(self.q_z0(z1), z0)

    def nll_p(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        n1, nx = self.nll_p_terms(z, x)
        nll = (n1 + nx).mean()
        return nll, {"ploss": nll / (self.n_pixels + self.nz1)}

    def nll_q(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        n1, n0 = self.nll_q_terms(z, x)
        nll = (n1 + n0).mean()
        return nll, {"qloss": nll / (self.nz0 + self.nz1)}

    def single_sample_kl(self, z: Latents, l0: Tensor, l1: Tensor) -> Tensor:
        """log q(z1|x) + log q(z0|z1) + nz0*0.6931 - log p(z1|z0) per sample, at the sample z.

        l0, l1 are the logits of q(z0|z1) and q(z1|x); log p(z0) = -nz0*log 2, with log 2
        rounded to 0.6931 as in the authors' code (LOG_2).
        """
        z0, z1 = z
        log_q = -bernoulli_nll(l1, z1) - bernoulli_nll(l0, z0)
        return log_q + self.nz0 * LOG_2 + bernoulli_nll(self.p_z1(z0), z1)

    def elbo_loss(self, x: Tensor, latents: Latents | None = None) -> tuple[Tensor, Logs, Logs]:
        fixed = latents or (None, None)
        l1 = self.q_z1_logits(x)
        z1 = zgr_sample(l1, fixed[1])
        l0 = self.q_z0(z1)
        z0 = zgr_sample(l0, fixed[0])
        data = self.pixels.nll(self.p_x(z1), x)
        kl = self.single_sample_kl((z0, z1), l0, l1)
        logs = {"dloss": self.per_pixel(data), "klloss": kl.mean() / (self.nz0 + self.nz1)}
        return (data + kl).mean(), logs, {"q1": l1, "q0": l0}
