"""The ladder HVAE on Fashion-MNIST (SPEC §2): encoder R 1000 wide, the decoder's p(z1|z0) 600
wide as in MNIST, tanh, ReLU in p(x|z1), and Gaussian pixels x ~ N(mu(z1), sigma^2) with one
learned log sigma (part of p)."""
from fmnist import DATASET

from symvae.model.ladder import LadderHVAE
from symvae.model.pixels import GaussianPixels


class HVAE(LadderHVAE):
    experiment, dataset = "fmnist-ladder", DATASET
    width, p_width, act, decoder_act, pixel_model = 1000, 600, "tanh", "relu", GaussianPixels
    # limiting chains: generate.py and the training grid from uniform noise, generate_data.py
    # and FID from binary noise
    chain_start, fid_chain_start = "uniform_noise", "binary_noise"
