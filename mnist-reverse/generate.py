"""Sample grids, e.g. `python generate.py --call_prefix 0 --nz0 30 --nz1 100`."""
from hvae import HVAE

from symvae.evaluate.generate import main

if __name__ == "__main__":
    raise SystemExit(main(HVAE))
