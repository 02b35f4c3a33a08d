"""Process settings for fast training, each chosen by measurement (docs/benchmarks.md).

- glibc malloc keeps freed memory: by default it serves every block above its
  mmap threshold (at most 32 MB) with a fresh `mmap` and unmaps it on free, so
  each large activation of a batch-1024 step is page-faulted and zeroed again
  on every iteration (about half of a CPU step). `mallopt` at start serves them
  from the heap and never trims it, so the pages are re-used.
- CUDA: cuDNN's autotuner for the fixed layer shapes. It only picks among
  convolution algorithms, so the fp32 arithmetic stays what it was.
- Precision stays PyTorch's default, as in the authors' runs: fp32 matrix
  products (`torch.backends.cuda.matmul.allow_tf32 = False`) and cuDNN
  convolutions with TF32 allowed (`torch.backends.cudnn.allow_tf32`, PyTorch's
  default; the convolutions are most of the work). `tf32=True` (the `--tf32`
  flag) opts in to TF32 matrix products too: faster on Ampere and later GPUs,
  ~10-bit mantissa products, and no longer the authors' numbers.
  `strict_fp32=True` (`--fp32_strict`) turns TF32 off everywhere, convolutions
  included (slower; for figures that must not depend on the GPU generation).
  The log header records both settings (`precision_note`).
- CPU, opt-in (`--bf16`): the learning step under bfloat16 autocast, with the
  networks' weights in channels-last layout (`learning_precision`). Measured on
  an AVX512-BF16 CPU (docs/benchmarks.md): autocast alone gains little, because
  oneDNN's bf16 transposed convolutions are slower than fp32 ones in the default
  layout; channels-last makes them fast. Not the authors' arithmetic, so never
  the default.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Callable

import torch

# <malloc.h> parameter numbers of mallopt()
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_applied: dict[str, bool] = {}


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # mallopt() exists in glibc; musl and other C libraries may lack it or ignore it
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def malloc_keep_memory(keep: bool = True) -> bool:
    """Make glibc keep freed large blocks (True) or return to its defaults (False).

    keep: no mmap-served blocks (M_MMAP_MAX 0) and no heap trimming
    (M_TRIM_THRESHOLD -1, i.e. the largest size_t). Returns whether glibc accepted it;
    False (and nothing changed) on other C libraries and systems.
    """
    libc = _libc()
    if libc is None:
        return False
    mmap_max, trim = (0, -1) if keep else (65536, 128 * 1024)  # glibc's defaults
    return bool(libc.mallopt(M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))


def configure(device: torch.device, threads: int | None = None, tf32: bool = False,
              strict_fp32: bool = False) -> dict[str, bool | int | str]:
    """Apply the measured process settings for training or sampling on `device`.

    Returns what was applied, for the log line. `threads` sets torch's CPU
    thread count (default: leave torch's choice, one per core); `tf32` allows
    TF32 matrix products on CUDA (default: fp32, as PyTorch and the authors);
    `strict_fp32` forbids TF32 in cuDNN's convolutions as well. On `cuda:N` the
    device is made current, so that whatever uses the current device (CUDA graphs,
    streams) works on N.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cpu" and "malloc" not in _applied:
        _applied["malloc"] = malloc_keep_memory(True)
    matmul_tf32 = tf32 and not strict_fp32 and device.type == "cuda"
    conv_tf32 = False
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        if strict_fp32:
            torch.backends.cudnn.allow_tf32 = False
        conv_tf32 = bool(torch.backends.cudnn.allow_tf32)
        torch.backends.cudnn.benchmark = True
    return {"malloc_keep": _applied.get("malloc", False), "threads": torch.get_num_threads(),
            "tf32": matmul_tf32, "conv_tf32": conv_tf32, "device": device.type}


def learning_precision(model: torch.nn.Module, device: torch.device,
                       bf16: bool) -> Callable[[], contextlib.AbstractContextManager]:
    """What the learning step runs under: a fresh bf16 autocast context per call (`bf16`,
    CPU only; the model's weights are put in channels-last layout), else a null context.
    The optimisers, the weights and the statistics stay fp32 either way."""
    if not bf16:
        return contextlib.nullcontext
    if device.type != "cpu":
        raise ValueError(f"bf16 autocast is offered for CPU training only, not {device}")
    model.to(memory_format=torch.channels_last)
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def precision_note(applied: dict[str, bool | int | str], bf16: bool = False) -> str:
    """The log header's words for the precision that `configure` set: on CUDA, TF32 of the
    matrix products and of cuDNN's convolutions; elsewhere plain fp32, or with `bf16` the
    learning step's bf16 autocast."""
    if applied.get("device") != "cuda":
        return "bf16 autocast (learning step), channels-last weights" if bf16 else "fp32"
    def word(key: str) -> str:
        return "on" if applied.get(key) else "off"
    return f"matmul tf32 {word('tf32')}, conv tf32 {word('conv_tf32')}"


def compile_model(model: torch.nn.Module) -> None:
    """torch.compile each network of the model in place (the learning steps stay eager)."""
    for child in model.children():
        child.compile()
