"""The reverse-order HVAE on MNIST (SPEC §2): q(z1|x) q(z0|z1) as in Wake-Sleep; MLP width
600, tanh, Bernoulli pixels. The encoder shares nothing with p. FID images are binarised as
sigmoid > 1/2, as in the authors' reverse scripts."""
from mnist import DATASET

from symvae.model.pixels import HalfProbabilityPixels
from symvae.model.reverse import ReverseHVAE


class HVAE(ReverseHVAE):
    experiment, dataset = "mnist-reverse", DATASET
    width, act, decoder_act, pixel_model = 600, "tanh", "tanh", HalfProbabilityPixels
    # limiting chains: generate.py and the training grid from binary noise, generate_data.py
    # and FID from a single shot thresholded at 1/2
    chain_start, fid_chain_start = "binary_noise", "exported_shot"
