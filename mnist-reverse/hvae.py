"""The reverse-order HVAE on MNIST (SPEC §2): q(z1|x) q(z0|z1) as in Wake-Sleep; MLP width
600, tanh, Bernoulli pixels. The encoder shares nothing with p."""
from mnist import DATASET

from symvae.pixels import BernoulliPixels
from symvae.reverse import ReverseHVAE


class HVAE(ReverseHVAE):
    experiment, dataset = "mnist-reverse", DATASET
    width, act, decoder_act, pixel_model = 600, "tanh", "tanh", BernoulliPixels
