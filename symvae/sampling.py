"""Sampling from a trained model (SPEC §6): single shot, the limiting chain, image grids.

"Single shot" (random code): z ~ p, image = p(x|z1) probabilities or means.
"Limiting": the Markov chain x -> z ~ q(z|x) -> x ~ p(x|z1), started from
noise; images are the decoder outputs of its last step.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from symvae.checkpoint import atomic_write
from symvae.model import HVAE, Latents


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
def run_chain(model: HVAE, x: Tensor, steps: int,
              on_step: Callable[[], None] | None = None) -> tuple[Latents, Tensor]:
    """Run the limiting chain `steps` (>= 1) steps from x; returns the last (z, decoder outputs)."""
    for _ in range(steps):
        z, out, x = model.limiting_step(x)
        if on_step:
            on_step()
    return z, out


@torch.no_grad()
def limiting(model: HVAE, n: int, steps: int) -> Tensor:
    """n limiting-distribution images: means of the last step of chains started from noise."""
    _, out = run_chain(model, model.pixels.chain_start(n, model._device()), steps)
    return model.pixels.mean(out)
