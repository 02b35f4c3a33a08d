"""generate_data.py: image sets for FID (SPEC §6) and the latent codes behind them.

generated_data/MODE/images/      the first --n data images (as the model sees them)
generated_data/MODE/sh_images/   as many single-shot images (random codes)
generated_data/MODE/lim_images/  as many limiting images (chains of --chain_steps steps)
generated_data/MODE/{prior,posterior,limiting}_z.npy   uint8 codes [n, nz0+nz1]
PNG files are 8-bit grey `img_00000.png` ...; binary experiments save images
thresholded at logit 0, grey ones the clamped means.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from symvae import runtime
from symvae.cli import (
    check_model_args,
    check_tag,
    ensure_dirs,
    fail,
    model_flags,
    pick_device,
    seed_everything,
)
from symvae.data import DataMissing
from symvae.generate import load_trained, positive
from symvae.model import HVAE
from symvae.png import write_grey
from symvae.sampling import run_chain, to_uint8

SETS = ("images", "sh_images", "lim_images")
CODES = ("prior_z", "posterior_z", "limiting_z")


class PngWriter:
    """Writes uint8 image chunks as PNG files from a pool of worker processes."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(workers) if workers > 0 else None
        self.pending: list = []

    def write(self, folder: Path, first: int, images: torch.Tensor) -> None:
        pixels = to_uint8(images.detach().float().cpu())[:, 0].numpy()
        if self.pool is None:
            write_grey(str(folder), first, pixels)
            return
        step = max(1, len(pixels) // 8)  # several tasks per chunk keep all workers busy
        for i in range(0, len(pixels), step):
            self.pending.append(self.pool.submit(write_grey, str(folder), first + i,
                                                 pixels[i:i + step]))

    def close(self) -> None:
        for future in self.pending:
            future.result()
        if self.pool is not None:
            self.pool.shutdown()


def _codes(z) -> np.ndarray:
    return torch.cat(z, 1).to(torch.uint8).cpu().numpy()


def main(model_cls: type[HVAE], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write image sets for FID.")
    model_flags(parser)
    parser.add_argument("--mode", required=True,
                        help="name of the subfolder of generated_data/ (e.g. sym or elbo)")
    parser.add_argument("--n", type=int, default=70000, help="images per set (default 70,000)")
    parser.add_argument("--chain_steps", type=int, default=1000,
                        help="steps of each limiting chain")
    parser.add_argument("--bs", type=int, default=1000, help="chains run side by side")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes writing PNG files (0: write in the main process)")
    parser.add_argument("--data_root", default=None, help="as for main_sym.py")
    args = parser.parse_args(argv)
    check_model_args(args)
    check_tag(args.mode, "--mode")
    for flag in ("n", "chain_steps", "bs"):
        positive(f"--{flag}", getattr(args, flag))
    device = pick_device(args.device)
    runtime.configure(device)
    seed_everything(args.seed)
    model = load_trained(model_cls, args, device)
    try:
        data = model_cls.dataset.load(args.data_root, device)
    except DataMissing as err:
        fail(str(err))
    n = min(args.n, len(data))
    out = Path.cwd() / "generated_data" / args.mode
    ensure_dirs(out, SETS)
    codes = {name: [] for name in CODES}
    writer = PngWriter(args.workers)
    bar = tqdm(total=n * (args.chain_steps + 2), unit="img", desc="generate_data")
    with torch.no_grad():
        for first in range(0, n, args.bs):
            size = min(args.bs, n - first)
            x = data.as_float(data.images[first:first + size])
            writer.write(out / "images", first, x)
            codes["posterior_z"].append(_codes(model.sample_q(x)[0]))
            z, shot = model.single_shot(size)
            codes["prior_z"].append(_codes(z))
            writer.write(out / "sh_images", first, model.pixels.export(shot))
            bar.update(2 * size)
            start = model.pixels.chain_start(size, device)
            z, last = run_chain(model, start, args.chain_steps, on_step=lambda s=size: bar.update(s))
            codes["limiting_z"].append(_codes(z))
            writer.write(out / "lim_images", first, model.pixels.export(last))
    writer.close()
    bar.close()
    for name, parts in codes.items():
        np.save(out / f"{name}.npy", np.concatenate(parts))
    print(f"wrote {n} images to each of {', '.join(str(out / s) for s in SETS)}")
    return 0
