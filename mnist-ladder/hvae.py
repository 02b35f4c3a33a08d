"""The ladder HVAE on MNIST (SPEC §2): MLP width 600, tanh, Bernoulli pixels."""
from mnist import DATASET

from symvae.ladder import LadderHVAE
from symvae.pixels import BernoulliPixels


class HVAE(LadderHVAE):
    experiment = "mnist-ladder"
    dataset = DATASET

    def __init__(self, nz0: int, nz1: int):
        super().__init__(nz0, nz1, width=600, act="tanh", decoder_act="tanh",
                         pixels=BernoulliPixels())
