"""A model small enough to enumerate: x of 8 bits, z0 of 2, z1 of 4, small MLP conditionals.

The decoder is the library's p(z0) p(z1|z0) p(x|z1) with an MLP p(x|z1); the
encoders are the library's LadderHVAE and ReverseHVAE with MLP trunks in place
of the convolutions, so learning runs the same code as the image experiments. The data law
pi(x) is known exactly: a mixture of prototypes with independent bit flips.

`python -m symvae toy` trains both rules from one start and prints the exact
figures of symvae.toy.exact over the iterations (see docs/toy.md).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from symvae.model.hvae import HVAE
from symvae.model.ladder import LadderHVAE
from symvae.model.nets import activation, mlp
from symvae.model.reverse import ReverseHVAE
from symvae.toy.exact import all_bits

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


class ToyLadder(LadderHVAE):
    """The library's ladder HVAE, q(z0|x) q(z1|z0,x), with MLP networks on NX-bit vectors."""

    experiment = "toy-ladder"

    def __init__(self, nx: int = NX, nz0: int = NZ0, nz1: int = NZ1, width: int = WIDTH,
                 act: str = ACT):
        super().__init__(nz0, nz1, trunk=toy_trunk(nx, width, act), width=width, act=act,
                         p_x=mlp(nz1, nx, width, 2, act), n_pixels=nx)
        self.nx = nx


class ToyReverse(ReverseHVAE):
    """The library's reverse HVAE, q(z1|x) q(z0|z1), with MLP networks on NX-bit vectors."""

    experiment = "toy-reverse"

    def __init__(self, nx: int = NX, nz0: int = NZ0, nz1: int = NZ1, width: int = WIDTH,
                 act: str = ACT):
        super().__init__(nz0, nz1, trunk=toy_trunk(nx, width, act), q_z0_hidden=2, width=width,
                         act=act, p_x=mlp(nz1, nx, width, 2, act), n_pixels=nx)
        self.nx = nx


ENCODERS: dict[str, type[HVAE]] = {"ladder": ToyLadder, "reverse": ToyReverse}
