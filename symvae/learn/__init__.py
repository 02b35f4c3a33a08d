"""How a model is trained: the two learning rules (symmetric equilibrium learning, ELBO), the
running statistics, the training loop with its CUDA-graph capture, checkpoints (ours and the
authors' format), the run lock and the device settings."""
