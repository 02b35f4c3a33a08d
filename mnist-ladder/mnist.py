"""MNIST as the binary experiments use it: 70,000 images binarised at 0.4375; 0.1% pixel flips."""
from symvae.data.datasets import Dataset, flip_noise

DATASET = Dataset("MNIST", threshold=0.4375, noise=flip_noise(0.001))
