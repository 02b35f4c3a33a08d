"""symvae: symmetric equilibrium learning of hierarchical VAEs with binary latents."""
import os

# OpenMP threads that wait for work spin only briefly before they sleep (docs/benchmarks.md,
# "Threads"). libgomp's default spin of 300,000 rounds makes two threads on a busy machine
# cost several times the CPU seconds of one; sleeping at once (OMP_WAIT_POLICY=PASSIVE)
# fixes that but slows two threads on a quiet machine; 1,000 rounds kept both speeds where
# measured. libgomp (the OpenMP of torch's Linux wheels) reads this when it is loaded, i.e.
# when torch is first imported: every entry point imports symvae first. A wait policy or
# spin count set by the user is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
