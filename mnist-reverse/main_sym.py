"""Symmetric equilibrium learning, e.g. `python main_sym.py --call_prefix 0 --nz0 30 --nz1 100`."""
from hvae import HVAE

from symvae.learn.train import main

if __name__ == "__main__":
    raise SystemExit(main(HVAE, "sym"))
