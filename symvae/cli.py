"""Command-line flags shared by the entry scripts, and their validation.

Every check names the flag and the fix; `fail` prints one line and exits 2,
before anything is written.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch

from symvae.entry import guarded

MAX_BITS = 4096  # far beyond the paper's 50/200; guards against typos like 30000
MAX_BATCH = 1 << 16
MAX_STEPSIZE = 0.01  # 100x the paper's 1e-4; Adam at such rates only diverges
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
DEVICE_TYPES = ("cpu", "cuda", "mps")
# Peak memory of one training iteration per image of the batch, measured on the CPU
# (max RSS at --bs 256 and 2048, fmnist-ladder symmetric, the largest: 1.37 MB per image),
# rounded up; plus what the process holds before the first batch.
TRAIN_BYTES_PER_IMAGE = 1.5e6
# Sampling without gradients, per image side by side: max RSS of fmnist-ladder's generate.py
# at --n 100 and 4100 differs by 0.64 MB per image; rounded up.
SAMPLE_BYTES_PER_IMAGE = 0.7e6
BASE_BYTES = 1.5e9


class DefaultsHelp(argparse.HelpFormatter):
    """--help shows each flag's default, `(default: 1024)`, unless its help already speaks of
    its default or it has none worth showing (None, a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)" if text else "(default: %(default)s)"
        return text


def new_parser(**kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help shows the defaults (every entry point's)."""
    return argparse.ArgumentParser(formatter_class=DefaultsHelp, **kwargs)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `code` is the conventional exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def stop_on_signals() -> dict:
    """Turn SIGINT and SIGTERM into Interrupted, so the command cleans up and says one line;
    returns the previous handlers."""
    def handler(signum, frame):
        raise Interrupted(signum)
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def interruptible(command: Callable[[], int], tool: str = "symvae") -> int:
    """Run a command with Ctrl-C and SIGTERM ending it by one line and 128 + the signal's
    number (130, 143) instead of a traceback, and an unforeseen exception by one line and
    symvae.entry.UNEXPECTED; the caller's handlers are put back after."""
    return guarded(lambda: _until_signal(command), tool)


def _until_signal(command: Callable[[], int]) -> int:
    previous = stop_on_signals()
    try:
        return command()
    except Interrupted as stop:
        print(f"{stop}: stopped; files written before are complete (each is replaced whole)",
              file=sys.stderr)
        return stop.code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def positive(flag: str, value: int) -> int:
    """`value` if it is at least 1, else fail naming the flag."""
    if value < 1:
        fail(f"{flag} {value}: must be a positive number")
    return value


def non_negative(flag: str, value: int) -> int:
    """`value` if it is at least 0, else fail naming the flag."""
    if value < 0:
        fail(f"{flag} {value}: must be 0 or more")
    return value


def load_data(dataset, data_root: str | None, device: torch.device):
    """The experiment's data set on `device` (fetched once if missing), or one clear error line."""
    from symvae.data.raw import DataError
    try:
        return dataset.load(data_root, device)
    except DataError as err:
        fail(str(err))


def available_memory(device: torch.device) -> float | None:
    """Bytes free for new allocations on `device` (None when unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(flag: str, value: int, per_item: float, device: torch.device,
                 base: float = BASE_BYTES) -> None:
    """Fail when `value` items of `per_item` bytes each (an estimate) cannot fit on `device`."""
    free = available_memory(device)
    need = base + value * per_item
    if free is not None and need > free:
        fit = max(int((free - base) // per_item), 0)
        fail(f"{flag} {value}: needs about {need / 1e9:.1f} GB but {free / 1e9:.1f} GB are free "
             f"on {device}; use {flag} {fit} or less")


def model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--call_prefix", default="0",
                        help="tag naming this run's model, log and images (default 0)")
    parser.add_argument("--nz0", type=int, default=30, help="bits of the top latent z0")
    parser.add_argument("--nz1", type=int, default=100, help="bits of the latent z1")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=None, help="seed all random generators")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA: TF32 matrix products too (faster, ~10-bit mantissa; default "
                             "fp32 products as in the authors' runs; cuDNN convolutions use "
                             "TF32 by PyTorch's default either way)")
    parser.add_argument("--fp32_strict", action="store_true",
                        help="CUDA: no TF32 at all, cuDNN convolutions included (slower; "
                             "figures that do not depend on the GPU generation)")


def train_parser(method: str) -> argparse.ArgumentParser:
    what = {"sym": "symmetric equilibrium learning", "elbo": "ELBO maximisation"}[method]
    p = new_parser(description=f"Learn this folder's HVAE by {what}.")
    model_flags(p)
    p.add_argument("--load_prefix", default=None,
                   help="continue from models/m_TAG.pt (full checkpoint or bare state dict)")
    p.add_argument("--stepsize", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--bs", type=int, default=1024, help="mini-batch size")
    p.add_argument("--niterations", type=int, default=None,
                   help="stop when the iteration count reaches this (default: never)")
    p.add_argument("--data_root", default=None,
                   help="folder with MNIST/ and FashionMNIST/ (default $SYMVAE_DATA or ./data "
                        "at the repository root)")
    p.add_argument("--log_period", type=int, default=100, help="iterations per log line")
    p.add_argument("--save_period", type=int, default=1000,
                   help="iterations per checkpoint and image grid")
    p.add_argument("--bf16", action="store_true",
                   help="CPU: the learning step under bfloat16 autocast, weights in "
                        "channels-last layout (1.1-1.3x faster per update at batch 64 and "
                        "about 1.5x at 256 on a CPU with AVX512-BF16; not the authors' "
                        "arithmetic; default fp32)")
    p.add_argument("--detect_anomaly", action="store_true",
                   help="torch.autograd anomaly detection (slow; for debugging)")
    p.add_argument("--nan_policy", choices=["stop", "skip"], default="stop",
                   help="on a non-finite loss: stop keeping the last checkpoint, or skip the batch")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--cuda_graph", choices=["auto", "off"], default="auto",
                   help="on CUDA, replay each iteration as one captured graph after the "
                        "first 1000 (auto), or stay eager (off)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if models/m_TAG.pt exists (it is replaced)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


# --- one set of checks per flag, for every command that takes it ---------------------------

def _bits(flag: str, value: int) -> None:
    if not 1 <= value <= MAX_BITS:
        fail(f"{flag} {value}: must be a number of bits between 1 and {MAX_BITS} "
             "(the README uses --nz0 30 --nz1 100)")


def _seed(flag: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        fail(f"{flag} {value}: must be between 0 and {MAX_SEED}"
             + (" (or leave it out)" if flag == "--seed" else ""))


def _batch(flag: str, value: int) -> None:
    if not 1 <= value <= MAX_BATCH:
        fail(f"{flag} {value}: must be between 1 and {MAX_BATCH}")


def _stepsize(flag: str, value: float) -> None:
    if not (value > 0 and value <= MAX_STEPSIZE):  # also refuses NaN
        fail(f"{flag} {value}: must be a positive learning rate of at most "
             f"{MAX_STEPSIZE:g} (the paper uses 1e-4)")


def _iterations(flag: str, value: int) -> None:
    if value < 1:
        fail(f"{flag} {value}: must be a positive number of iterations"
             + (" (or leave it out to run until stopped)" if flag == "--niterations" else ""))


def _tag(flag: str, value: str) -> None:
    check_tag(value, flag)


def _device(flag: str, value: str) -> None:
    pick_device(value, flag)


# flag (its argparse dest) -> its check; a list value (nargs) is checked item by item
FLAG_CHECKS: dict[str, Callable[[str, object], None]] = {
    "call_prefix": _tag, "load_prefix": _tag, "mode": _tag,
    "nz0": _bits, "nz1": _bits, "seed": _seed, "seeds": _seed,
    "bs": _batch, "fid_bs": _batch, "feature_bs": _batch,
    "stepsize": _stepsize,
    "niterations": _iterations, "log_period": _iterations, "save_period": _iterations,
    "n": positive, "chain_steps": positive, "workers": non_negative,
    "device": _device,
}


def check_flags(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> None:
    """Check every flag of `args` that has a shared check (FLAG_CHECKS), in the same way for
    every command; flags left out (None) and those named in `skip` are not checked."""
    for dest, check in FLAG_CHECKS.items():
        if dest in skip:
            continue
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                check(f"--{dest}", item)


def check_model_args(args: argparse.Namespace) -> None:
    check_flags(args)


def check_train_args(args: argparse.Namespace) -> None:
    check_flags(args)


def check_tag(tag: str, flag: str) -> None:
    """A tag becomes part of file names: no separators, no '..', nothing hidden."""
    if not re.fullmatch(r"[A-Za-z0-9_.+=-]{1,100}", tag) or ".." in tag or tag.startswith("."):
        fail(f"{flag} {tag!r}: use letters, digits and _ . + = - only (no '/', no '..'), "
             "e.g. {flag} 0".replace("{flag}", flag))


def device_named(name: str, flag: str = "--device") -> torch.device | None:
    """The device `name` names (None for auto), wherever it is, or fail naming the flag."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        fail(f"{flag} {name!r}: not a device symvae runs on; use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_device(name: str, flag: str = "--device") -> torch.device:
    """The device `name` means, or fail naming the flag when it is not one here."""
    device = device_named(name, flag)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"{flag} {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s); "
             "pick another index")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail(f"{flag} {name}: MPS is not available here; use --device cpu or auto")
    return device


def seed_everything(seed: int | None) -> None:
    if seed is None:
        return
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_folder(path: Path, flag: str) -> None:
    """Fail unless `path` is a writable folder, or can be made as one (its nearest existing
    parent is a writable folder); nothing is created."""
    import os
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                fail(f"{flag} {path}: {parent} is a file, not a folder; pick another {flag}")
            if not os.access(parent, os.W_OK | os.X_OK):
                fail(f"{flag} {path}: {parent} is not writable; fix its permissions or pick "
                     f"another {flag}")
            return


def ensure_dirs(folder: Path, names: tuple[str, ...]) -> None:
    """Create output folders, or fail with the folder and the fix when they are not writable."""
    import os
    for name in names:  # check all first, so a failure leaves no half-made set of folders
        for path in (folder / name, *(folder / name).parents):
            if path.exists() and not path.is_dir():
                fail(f"cannot create output folder {folder / name}: {path} is a file, not a "
                     "folder; move it away or run from another experiment folder")
    for name in names:
        path = folder / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            fail(f"cannot create output folder {path} ({err.strerror}); run from a writable "
                 "experiment folder")
        if not os.access(path, os.W_OK):
            fail(f"output folder {path} is not writable; fix its permissions or run elsewhere")
