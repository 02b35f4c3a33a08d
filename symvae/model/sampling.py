"""Sampling from a trained model (SPEC §6): single shot, the limiting chain, image grids.

"Single shot" (random code): z ~ p, image = p(x|z1) probabilities or means.
"Limiting": the Markov chain x -> z ~ q(z|x) -> x ~ p(x|z1), counted as the
authors count it: from a start (CHAIN_STARTS, chosen per experiment in its
hvae.py), `steps` sampled steps, then one output step whose decoder outputs
are the image, i.e. steps + 1 encoder passes.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from symvae.ground import atomic_write
from symvae.model.hvae import HVAE, Latents
from symvae.model.nets import IMAGE_SHAPE


def _binary_noise(model: HVAE, n: int) -> Tensor:
    return (torch.rand(n, *IMAGE_SHAPE, device=model._device()) < 0.5).float()


def _uniform_noise(model: HVAE, n: int) -> Tensor:
    return torch.rand(n, *IMAGE_SHAPE, device=model._device())


def _ancestral(model: HVAE, n: int) -> Tensor:
    return model.sample_p(n)[1]


def _exported_shot(model: HVAE, n: int) -> Tensor:
    return model.pixels.export(model.single_shot(n)[1])


# The named starts of a limiting chain: n images [n,1,28,28] from the model's device.
CHAIN_STARTS: dict[str, Callable[[HVAE, int], Tensor]] = {
    "binary_noise": _binary_noise,  # pixels 0/1 with probability 1/2 each
    "uniform_noise": _uniform_noise,  # pixels uniform in [0, 1)
    "ancestral": _ancestral,  # x of (z0, z1, x) ~ p
    "exported_shot": _exported_shot,  # a single shot as written for FID (thresholded/clamped)
}


def to_uint8(images: Tensor) -> Tensor:
    """[0,1] floats -> uint8 exactly as torchvision.utils.save_image quantises them."""
    return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def save_grid(images: Tensor, path: Path, nrow: int = 10) -> None:
    """Save images [N,1,28,28] in [0,1] as one PNG grid of `nrow` per row, atomically."""
    from PIL import Image
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    pixels = to_uint8(grid[0]).numpy()
    atomic_write(path, lambda f: Image.fromarray(pixels, mode="L").save(f, format="PNG"))


@torch.no_grad()
def single_shot(model: HVAE, n: int) -> Tensor:
    """n single-shot images: decoder means/probabilities for z ~ p."""
    return model.pixels.mean(model.single_shot(n)[1])


@torch.no_grad()
def chain_start(model: HVAE, name: str, n: int) -> Tensor:
    """n start images of a limiting chain, by the CHAIN_STARTS name."""
    return CHAIN_STARTS[name](model, n)


@torch.no_grad()
def run_chain(model: HVAE, x: Tensor, steps: int,
              on_step: Callable[[], None] | None = None) -> tuple[Latents, Tensor]:
    """From x, `steps` (>= 0) sampled steps x <- x' ~ p(x|z1), z ~ q(z|x), then the output
    step; returns its (z, decoder outputs). `on_step` is told of each of the steps + 1."""
    for _ in range(steps):
        x = model.limiting_step(x)[2]
        if on_step:
            on_step()
    z, out = model.limiting_out(x)
    if on_step:
        on_step()
    return z, out


@torch.no_grad()
def limiting(model: HVAE, n: int, steps: int) -> Tensor:
    """n limiting-distribution images: decoder means of the output step of chains started at
    the experiment's `chain_start` after `steps` sampled steps."""
    _, out = run_chain(model, chain_start(model, model.chain_start, n), steps)
    return model.pixels.mean(out)
