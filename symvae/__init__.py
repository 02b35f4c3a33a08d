"""symvae: symmetric equilibrium learning of hierarchical VAEs with binary latents."""
import os

# OpenMP threads that wait for work sleep at once instead of spinning (docs/benchmarks.md,
# "Threads"): on a busy machine two spinning threads cost six times the CPU seconds of one
# thread per iteration, two sleeping ones about what one thread costs. libgomp reads this
# when it is loaded, i.e. when torch is first imported: every entry point imports symvae
# first. A value set by the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
