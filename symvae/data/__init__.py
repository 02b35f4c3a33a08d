"""The datasets: their raw files and checks, the fetch that builds them offline, the loader that
keeps them on the device, and pytorch-fid's Inception weights.
`python -m symvae.data fetch [mnist] [fmnist] [inception]` is `symvae fetch`."""
