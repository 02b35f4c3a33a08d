"""`python -m symvae.data fetch ...`: the data fetch under the package's own name."""
import sys

from symvae.data.fetch import main

sys.exit(main(sys.argv[1:]))
