"""The paper's models and nothing else: the Bernoulli and Gaussian pieces, the networks, the
HVAE with its two encoder orders (ladder, reverse), and sampling from a trained model.
Imports only the ground floor below it."""
