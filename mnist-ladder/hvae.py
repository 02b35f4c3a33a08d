"""The ladder HVAE on MNIST (SPEC §2): MLP width 600, tanh, Bernoulli pixels."""
from mnist import DATASET

from symvae.model.ladder import LadderHVAE
from symvae.model.pixels import BernoulliPixels


class HVAE(LadderHVAE):
    experiment, dataset = "mnist-ladder", DATASET
    width, act, decoder_act, pixel_model = 600, "tanh", "tanh", BernoulliPixels
    # limiting chains: generate.py and the training grid from binary noise, generate_data.py
    # and FID from an ancestral sample x ~ p
    chain_start, fid_chain_start = "binary_noise", "ancestral"
