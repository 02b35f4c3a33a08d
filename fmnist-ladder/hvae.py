"""The ladder HVAE on Fashion-MNIST (SPEC §2): MLP width 1000, tanh, ReLU in p(x|z1), and
Gaussian pixels x ~ N(mu(z1), sigma^2) with one learned log sigma (part of p)."""
from fmnist import DATASET

from symvae.ladder import LadderHVAE
from symvae.pixels import GaussianPixels


class HVAE(LadderHVAE):
    experiment, dataset = "fmnist-ladder", DATASET
    width, act, decoder_act, pixel_model = 1000, "tanh", "relu", GaussianPixels
