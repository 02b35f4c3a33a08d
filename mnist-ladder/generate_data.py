"""FID image sets, e.g. `python generate_data.py --call_prefix 0 --mode sym --nz0 30 --nz1 100`."""
from hvae import HVAE

from symvae.evaluate.export import main

if __name__ == "__main__":
    raise SystemExit(main(HVAE))
