"""Fashion-MNIST as the grey experiment uses it: 70,000 grey images in [0,1]; N(0, 0.01^2) noise."""
from symvae.data.datasets import Dataset, gaussian_noise

DATASET = Dataset("FashionMNIST", threshold=None, noise=gaussian_noise(0.01))
