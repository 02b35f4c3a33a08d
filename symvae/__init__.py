"""symvae: symmetric equilibrium learning of hierarchical VAEs with binary latents."""
