"""generate.py: 40 single-shot and 40 limiting images of a trained model as 4x10 grids.

Writes images/generated_sh_TAG.png (random codes) and images/generated_sta_TAG.png
(limiting distribution: chains from the experiment's chain_start, binary noise for MNIST and
uniform noise for Fashion-MNIST, --chain_steps sampled steps, then the decoder means of one
more step).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from symvae.cli import (
    SAMPLE_BYTES_PER_IMAGE,
    check_flags,
    check_memory,
    ensure_dirs,
    fail,
    interruptible,
    model_flags,
    new_parser,
    pick_device,
    seed_everything,
)
from symvae.entry import cannot_write, details_beside, parse_args
from symvae.ground import CheckpointError
from symvae.learn import checkpoint as ckpt_io
from symvae.learn import runtime
from symvae.model.hvae import HVAE
from symvae.model.sampling import limiting, save_grid, single_shot


def load_trained(model_cls: type[HVAE], args: argparse.Namespace,
                 device: torch.device) -> HVAE:
    """The model of models/m_TAG.pt in the current folder, checked against --nz0/--nz1."""
    path = Path.cwd() / "models" / f"m_{args.call_prefix}.pt"
    model = model_cls(args.nz0, args.nz1)
    try:
        ckpt = ckpt_io.load(path)
        ckpt_io.check_compatible(ckpt, path, model, model.experiment, args.nz0, args.nz1)
    except CheckpointError as err:
        fail(str(err))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def main(model_cls: type[HVAE], argv: list[str] | None = None) -> int:
    """Entry point of generate.py; Ctrl-C or SIGTERM stop it with 130 or 143."""
    return interruptible(lambda: _main(model_cls, argv), "generate")


def _main(model_cls: type[HVAE], argv: list[str] | None) -> int:
    parser = new_parser(description="Generate sample grids from a trained model.")
    model_flags(parser)
    parser.add_argument("--n", type=int, default=40, help="images per grid (10 per row)")
    parser.add_argument("--chain_steps", type=int, default=1000,
                        help="sampled steps of the limiting chain before its output step")
    args = parse_args(parser, argv)
    check_flags(args)
    details_beside(Path.cwd() / "logs", f"error-generate-{args.call_prefix}")
    device = pick_device(args.device)
    check_memory("--n", args.n, SAMPLE_BYTES_PER_IMAGE, device)
    runtime.configure(device, tf32=args.tf32, strict_fp32=args.fp32_strict)
    seed_everything(args.seed)
    model = load_trained(model_cls, args, device)
    folder, tag = Path.cwd(), args.call_prefix
    for kind in ("sh", "sta"):  # refused before any work, not found when writing
        if (folder / "images" / f"generated_{kind}_{tag}.png").is_dir():
            fail(f"images/generated_{kind}_{tag}.png is a folder, but the grid is written there; "
                 "move it away or pick another --call_prefix")
    ensure_dirs(folder, ("images",))
    # both drawn before either is written: a failure in between leaves no mixed pair
    grids = {"sh": single_shot(model, args.n), "sta": limiting(model, args.n, args.chain_steps)}
    try:
        for kind, images in grids.items():
            save_grid(images, folder / "images" / f"generated_{kind}_{tag}.png")
    except OSError as err:  # each grid is written whole or not at all
        fail(f"{cannot_write(err, 'a grid')} and run again", code=4)
    print(f"wrote images/generated_sh_{tag}.png and images/generated_sta_{tag}.png")
    return 0
