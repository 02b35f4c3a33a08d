"""generate_data.py: image sets for FID (SPEC §6) and the latent codes behind them.

generated_data/MODE/images/      the first --n data images (as the model sees them)
generated_data/MODE/sh_images/   as many single-shot images (random codes)
generated_data/MODE/lim_images/  as many limiting images (each chain: --chain_steps sampled
                                 steps from the experiment's fid_chain_start, then the output step)
generated_data/MODE/z{0,1}_{prior,post,lim}.npy   float32 latent codes, one row per image:
    prior = z ~ p of the single shots, post = z ~ q(z|x) of the data images,
    lim = the z of each chain's output step
PNG files are 8-bit grey `img_00000.png` ...; binary experiments save thresholded
images (the pixel model's export), grey ones the clamped means.
generated_data/MODE/produced_by.json  the command, checkpoint and sizes that made the set

A set is built in generated_data/.MODE.partial and renamed into place only when complete,
so generated_data/MODE is always one whole run's output (or absent); a killed run leaves
only the hidden staging folder, which the next run on MODE clears.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from symvae.cli import (
    SAMPLE_BYTES_PER_IMAGE,
    Interrupted,
    check_flags,
    check_memory,
    ensure_dirs,
    fail,
    interruptible,
    load_data,
    model_flags,
    new_parser,
    pick_device,
    seed_everything,
)
from symvae.data.datasets import DeviceData
from symvae.entry import cannot_write, details_beside, parse_args
from symvae.evaluate.generate import load_trained
from symvae.evaluate.png import write_grey
from symvae.learn import runtime
from symvae.learn.lock import Busy, RunLock
from symvae.model.hvae import HVAE, Latents
from symvae.model.sampling import chain_start, run_chain, to_uint8

SETS = ("images", "sh_images", "lim_images")
# file stem -> (Chunk field, latent layer)
CODES = {f"z{layer}_{kind}": (field, layer) for kind, field in
         (("prior", "prior_z"), ("post", "posterior_z"), ("lim", "limiting_z")) for layer in (0, 1)}


class PngWriter:
    """Writes uint8 image chunks as PNG files from a pool of worker processes."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(workers, initializer=_worker_start,
                                        initargs=(os.getpid(),)) if workers > 0 else None
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
        """Wait for every file; raises the first worker's error (e.g. OSError of a full disk)."""
        for future in self.pending:
            future.result()
        if self.pool is not None:
            self.pool.shutdown()

    def abandon(self) -> None:
        """Stop the workers after their current file, dropping what is still queued."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _worker_start(parent: int) -> None:
    """A PNG worker ends with its parent, however the parent ends (even by kill -9)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass

    def watch() -> None:  # other systems, and a parent that died before prctl
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _codes(z: Tensor) -> np.ndarray:
    return z.float().cpu().numpy()


@dataclass
class Chunk:
    """One chunk of the FID image sets, images as written: data, single shot, limiting."""

    first: int  # index of the chunk's first image in each set
    data: Tensor  # data images in [0,1] (as the model sees them)
    posterior_z: Latents  # z ~ q(z|x) of the data images
    prior_z: Latents  # z ~ p of the single-shot images
    shot: Tensor  # pixels.export of p(x|z1) for z ~ p
    limiting_z: Latents  # z of each chain's output step
    limiting: Tensor  # pixels.export of the decoder outputs of each chain's output step


@torch.no_grad()
def image_chunks(model: HVAE, data: DeviceData, n: int, bs: int, chain_steps: int,
                 on_progress: Callable[[int], None] | None = None) -> Iterator[Chunk]:
    """The first n images of each FID set, `bs` at a time (chains run side by side).

    Each chain starts at the experiment's `fid_chain_start`, runs `chain_steps`
    sampled steps and one output step (symvae.model.sampling.run_chain). Random numbers
    are drawn in one fixed order per chunk (q(z|x) of the data, the single shot,
    the chain's start, then the chain), so a seed gives the same images to every
    consumer (generate_data.py, the score command). `on_progress(k)` is told of
    k more image-steps: 2 per image for data and single shot, 1 per chain step
    (chain_steps + 1 of them).
    """
    tick = on_progress or (lambda k: None)
    for first in range(0, n, bs):
        size = min(bs, n - first)
        x = data.as_float(data.images[first:first + size])
        posterior_z = model.sample_q(x)[0]
        prior_z, shot = model.single_shot(size)
        tick(2 * size)
        start = chain_start(model, model.fid_chain_start, size)
        limiting_z, last = run_chain(model, start, chain_steps, on_step=lambda s=size: tick(s))
        yield Chunk(first, x, posterior_z, prior_z, model.pixels.export(shot),
                    limiting_z, model.pixels.export(last))


def main(model_cls: type[HVAE], argv: list[str] | None = None) -> int:
    """Entry point of generate_data.py; Ctrl-C or SIGTERM stop it with 130 or 143."""
    return interruptible(lambda: _main(model_cls, argv), "generate_data")


def _main(model_cls: type[HVAE], argv: list[str] | None) -> int:
    parser = new_parser(description="Write image sets for FID.")
    model_flags(parser)
    parser.add_argument("--mode", required=True,
                        help="name of the subfolder of generated_data/ (e.g. sym or elbo)")
    parser.add_argument("--n", type=int, default=70000,
                        help="images per set (default 70,000); the data set is its first N "
                             "images in stored order (MNIST's training images first)")
    parser.add_argument("--chain_steps", type=int, default=1000,
                        help="sampled steps of each limiting chain before its output step")
    parser.add_argument("--bs", type=int, default=1000, help="chains run side by side")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes writing PNG files (0: write in the main process)")
    parser.add_argument("--data_root", default=None, help="as for main_sym.py")
    args = parse_args(parser, argv)
    check_flags(args)
    if args.n < 2:  # the sets are for FID: pytorch-fid hangs on a folder of one image
        fail(f"--n {args.n}: FID needs at least 2 images per set (the authors use 70000)")
    details_beside(Path.cwd() / "logs", f"error-generate_data-{args.call_prefix}")
    device = pick_device(args.device)
    check_memory("--bs", args.bs, SAMPLE_BYTES_PER_IMAGE, device)
    runtime.configure(device, tf32=args.tf32, strict_fp32=args.fp32_strict)
    seed_everything(args.seed)
    model = load_trained(model_cls, args, device)
    data = load_data(model_cls.dataset, args.data_root, device)
    n = min(args.n, len(data))
    base = Path.cwd() / "generated_data"
    out = base / args.mode
    ensure_dirs(Path.cwd(), ("generated_data",))
    if out.is_symlink():  # publish() replaces the folder whole: it would replace the link
        fail(f"{out} is a symbolic link (to {os.readlink(out)}), but the image sets replace "
             f"generated_data/{args.mode} whole; remove the link or pick another --mode")
    if out.exists() and not out.is_dir():
        fail(f"{out} is a file, but the image sets go there; move it away or pick another --mode")
    try:
        lock = RunLock(base / f".{args.mode}.lock").acquire()
    except Busy as busy:
        fail(f"--mode {args.mode}: {out} is being written by a running process (PID {busy.pid}); "
             "wait for it to end, stop it, or pick another --mode")
    stage = base / f".{args.mode}.partial"
    try:
        for leftover in (stage, base / f".{args.mode}.old"):  # of a run that was killed
            remove(leftover)
        write_sets(model, data, n, args, stage)
        publish(stage, out)
    except Interrupted as stop:
        shutil.rmtree(stage, ignore_errors=True)
        print(f"{stop}: stopped; {out} is as it was before this run", file=sys.stderr)
        return stop.code
    except OSError as err:
        shutil.rmtree(stage, ignore_errors=True)
        fail(f"{cannot_write(err, 'an image file')}, and run again; {out} is as it was before "
             "this run", code=4)
    except BaseException:  # whatever else stops it: no half-written set is left behind
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        lock.release()
    print(f"wrote {n} images to each of {', '.join(str(out / s) for s in SETS)}")
    return 0


def write_sets(model: HVAE, data: DeviceData, n: int, args: argparse.Namespace,
               stage: Path) -> None:
    """The three PNG sets, the latent codes and produced_by.json, all into `stage`."""
    for name in SETS:
        (stage / name).mkdir(parents=True)
    codes: dict[str, list[np.ndarray]] = {name: [] for name in CODES}
    writer = PngWriter(args.workers)
    # image-steps: a chain step of one image counts one, so the rate is not images per second
    bar = tqdm(total=n * (args.chain_steps + 3), unit="img-step", desc="generate_data")
    # a signal only marks the stop, which is raised between image steps: raised inside the
    # pool's own code it could leave a lock held and the shutdown waiting for ever
    signals: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: signals.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}

    def progress(k: int) -> None:
        bar.update(k)
        if signals:
            raise Interrupted(signals[0])
    try:
        for chunk in image_chunks(model, data, n, args.bs, args.chain_steps, progress):
            writer.write(stage / "images", chunk.first, chunk.data)
            writer.write(stage / "sh_images", chunk.first, chunk.shot)
            writer.write(stage / "lim_images", chunk.first, chunk.limiting)
            for name, (field, layer) in CODES.items():
                codes[name].append(_codes(getattr(chunk, field)[layer]))
            progress(0)
        writer.close()
        progress(0)
    except BaseException:
        writer.abandon()
        raise
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for name, parts in codes.items():
        np.save(stage / f"{name}.npy", np.concatenate(parts))
    record = {"experiment": model.experiment, "checkpoint": f"models/m_{args.call_prefix}.pt",
              "flags": vars(args), "images_per_set": n,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (stage / "produced_by.json").write_text(json.dumps(record, indent=1) + "\n")


def publish(stage: Path, out: Path) -> None:
    """Put the complete set `stage` where `out` is: the old set is moved aside, then removed."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        os.rename(out, old)
    os.rename(stage, out)
    remove(old)


def remove(path: Path) -> None:
    """Remove a file, a link or a folder tree, whichever stands at `path` (if any)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
