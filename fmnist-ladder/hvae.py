"""The ladder HVAE on Fashion-MNIST (SPEC §2): MLP width 1000, tanh, ReLU in p(x|z1).

Gaussian pixels x ~ N(mu(z1), sigma^2) with one learned log sigma (part of p).
"""
from fmnist import DATASET

from symvae.ladder import LadderHVAE
from symvae.pixels import GaussianPixels


class HVAE(LadderHVAE):
    experiment = "fmnist-ladder"
    dataset = DATASET

    def __init__(self, nz0: int, nz1: int):
        super().__init__(nz0, nz1, width=1000, act="tanh", decoder_act="relu",
                         pixels=GaussianPixels())
