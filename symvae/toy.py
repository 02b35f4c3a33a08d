"""A model small enough to enumerate: x of 8 bits, z0 of 2, z1 of 4, small MLP conditionals.

The decoder is the library's p(z0) p(z1|z0) p(x|z1) with an MLP p(x|z1); the
ladder encoder is the library's LadderHVAE with an MLP trunk in place of the
convolutions, so learning runs the same code as the image experiments. The
reverse encoder q(z1|x) q(z0|z1) is written here for vectors. The data law
pi(x) is known exactly: a mixture of prototypes with independent bit flips.

`python -m symvae.toy` trains both rules from one start and prints the exact
figures of symvae.exact over the iterations (see docs/toy.md).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from symvae.distributions import bernoulli_nll, sample_bernoulli, zgr_sample
from symvae.exact import all_bits
from symvae.ladder import LadderHVAE
from symvae.model import HVAE, Latents, Logs
from symvae.nets import SkipMLP, activation, mlp
from symvae.pixels import BernoulliPixels

NX, NZ0, NZ1, WIDTH, ACT = 8, 2, 4, 32, "tanh"
# pi(x): prototype k with probability WEIGHTS[k], then every bit flipped with probability FLIP.
PROTOTYPES = ("11110000", "00111100", "10101010", "11001111")
WEIGHTS = (0.4, 0.3, 0.2, 0.1)
FLIP = 0.05


class ToyData:
    """The data law pi(x) over all 2^NX patterns, and iid batches drawn from it."""

    def __init__(self, prototypes: tuple[str, ...] = PROTOTYPES,
                 weights: tuple[float, ...] = WEIGHTS, flip: float = FLIP):
        nx = len(prototypes[0])
        self.nx = nx
        self.patterns = all_bits(nx)
        protos = torch.tensor([[float(c) for c in p] for p in prototypes], dtype=torch.float64)
        diff = (self.patterns[:, None, :] != protos[None]).sum(2).double()  # [2^nx, K] Hamming
        per_proto = flip ** diff * (1 - flip) ** (nx - diff)
        self.pi = per_proto @ torch.tensor(weights, dtype=torch.float64)  # pi(x), [2^nx]

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """n patterns x ~ pi, [n, nx] float32."""
        index = torch.multinomial(self.pi, n, replacement=True)
        return self.patterns[index].float().to(device)


def toy_trunk(nx: int, width: int, act: str) -> nn.Sequential:
    """x [B, nx] -> features [B, width]: the encoder trunk, two layers in place of convolutions."""
    return nn.Sequential(nn.Linear(nx, width), activation(act),
                         nn.Linear(width, width), activation(act))


class ToyMixin:
    """What both toy models add to the interface: the x size, and log terms per bit of x."""

    nx: int

    def per_pixel(self, nll: Tensor) -> Tensor:
        return nll.mean() / self.nx


class ToyLadder(ToyMixin, LadderHVAE):
    """The library's ladder HVAE, q(z0|x) q(z1|z0,x), with MLP networks on NX-bit vectors."""

    experiment = "toy-ladder"

    def __init__(self, nx: int = NX, nz0: int = NZ0, nz1: int = NZ1, width: int = WIDTH,
                 act: str = ACT):
        super().__init__(nz0, nz1, width, act, act, BernoulliPixels(),
                         trunk=toy_trunk(nx, width, act), p_x=mlp(nz1, nx, width, 2, act))
        self.nx = nx


class ToyReverse(ToyMixin, HVAE):
    """Reverse (Wake-Sleep) order q(z1|x) q(z0|z1): two networks, nothing shared with p."""

    experiment = "toy-reverse"
    sym_names = ("ploss", "qloss")
    elbo_names = ("dloss", "klloss")

    def __init__(self, nx: int = NX, nz0: int = NZ0, nz1: int = NZ1, width: int = WIDTH,
                 act: str = ACT):
        super().__init__(nz0, nz1, width, act, act, BernoulliPixels(),
                         p_x=mlp(nz1, nx, width, 2, act))
        self.nx = nx
        self.q_z1 = nn.Sequential(toy_trunk(nx, width, act), nn.Linear(width, nz1))
        self.q_z0 = SkipMLP(nz1, nz0, width, 2, act)

    def sample_q(self, x: Tensor) -> tuple[Latents, Logs]:
        l1 = self.q_z1(x)
        z1 = sample_bernoulli(l1)
        l0 = self.q_z0(z1)
        return (sample_bernoulli(l0), z1), {"q1": l1, "q0": l0}

    def nll_q_terms(self, z: Latents, x: Tensor) -> tuple[Tensor, Tensor]:
        """(-log q(z1|x), -log q(z0|z1)) per sample."""
        z0, z1 = z
        return bernoulli_nll(self.q_z1(x), z1), bernoulli_nll(self.q_z0(z1), z0)

    def nll_p(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        n1, nx = self.nll_p_terms(z, x)
        loss = (n1 + nx).mean()
        return loss, {"ploss": loss / (self.nx + self.nz1)}

    def nll_q(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        n1, n0 = self.nll_q_terms(z, x)
        loss = (n1 + n0).mean()
        return loss, {"qloss": loss / (self.nz0 + self.nz1)}

    def elbo_loss(self, x: Tensor) -> tuple[Tensor, Logs, Logs]:
        """-log p(x|z1) + log q(z1|x) + log q(z0|z1) - log p(z0) - log p(z1|z0), z ~ q by ZGR."""
        l1 = self.q_z1(x)
        z1 = zgr_sample(l1)
        l0 = self.q_z0(z1)
        z0 = zgr_sample(l0)
        data = self.pixels.nll(self.p_x(z1), x)
        kl = (bernoulli_nll(self.p_z1(z0), z1) - bernoulli_nll(l1, z1) - bernoulli_nll(l0, z0)
              + self.nz0 * math.log(2.0))
        logs = {"dloss": self.per_pixel(data), "klloss": kl.mean() / (self.nz0 + self.nz1)}
        return (data + kl).mean(), logs, {"q1": l1, "q0": l0}


ENCODERS: dict[str, type[HVAE]] = {"ladder": ToyLadder, "reverse": ToyReverse}
