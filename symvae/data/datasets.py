"""Datasets (SPEC §3): MNIST and Fashion-MNIST, train+test concatenated, kept on the device.

The raw files live once under one data root for all experiments: `--data_root`,
else `$SYMVAE_DATA`, else `data/` at the repository root. `python -m symvae.data
fetch [mnist] [fmnist] [inception]` fetches and verifies them (see symvae.data.fetch).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from symvae.data.raw import (
    DataError,
    DataMissing,
    check_uncompressed,
    default_data_root,
    verify_raw,
)

# torchvision class name -> name used by the fetch command
FETCH_NAMES = {"MNIST": "mnist", "FashionMNIST": "fmnist"}


def flip_noise(rate: float) -> Callable[[Tensor], Tensor]:
    """Training noise for binary images: flip each pixel with probability `rate`."""
    def noise(x: Tensor) -> Tensor:
        return torch.where(torch.rand_like(x) < rate, 1 - x, x)
    return noise


def gaussian_noise(std: float) -> Callable[[Tensor], Tensor]:
    """Training noise for grey images: add N(0, std^2) per pixel."""
    def noise(x: Tensor) -> Tensor:
        return x + std * torch.randn_like(x)
    return noise


@dataclass(frozen=True)
class Dataset:
    """Which data, which preprocessing, which training noise."""

    name: str  # torchvision dataset class: "MNIST" or "FashionMNIST"
    threshold: float | None  # binarise at load (pixel > threshold), or keep grey levels
    noise: Callable[[Tensor], Tensor]

    def load_uint8(self, root: Path) -> Tensor:
        """All 70,000 images (train then test) as uint8 [N,1,28,28] from the raw files."""
        import torchvision.datasets as tvd
        cls = getattr(tvd, self.name)
        parts = [cls(str(root), train=train, download=False).data for train in (True, False)]
        return torch.cat(parts).unsqueeze(1)

    def preprocess(self, raw: Tensor) -> tuple[Tensor, float]:
        """(stored uint8 images, divisor to [0,1]): binary 0/1 when thresholded, else 0..255."""
        if self.threshold is None:
            return raw, 255.0
        return (raw.float() / 255 > self.threshold).to(torch.uint8), 1.0

    def load(self, root: Path | None, device: torch.device, fetch: bool = True) -> DeviceData:
        """The whole preprocessed set on `device`; fetches it once if missing."""
        root = Path(root) if root else default_data_root()
        check_uncompressed(root / self.name / "raw")
        verify_raw(FETCH_NAMES[self.name], root / self.name / "raw")
        try:
            raw = self.load_uint8(root)
        except PermissionError as err:
            raise DataError(f"{self.name} under data root {root}: permission denied "
                            f"({err.filename}); make it readable or point --data_root elsewhere"
                            ) from None
        except (ValueError, IndexError, TypeError) as err:  # torchvision's IDX reader
            raise DataError(f"{self.name} under data root {root}: the raw files are not IDX "
                            f"files torchvision can read ({type(err).__name__}: "
                            f"{str(err)[:80]}); put uncompressed IDX files of at least 2 "
                            "images there") from None
        except RuntimeError as err:
            if not fetch:
                raise DataMissing(self._missing_message(root, err)) from None
            _try_fetch(FETCH_NAMES[self.name], root)
            return self.load(root, device, fetch=False)
        if len(raw) < 2:  # a data set of your own: training and FID need images to draw
            raise DataError(f"{self.name} under data root {root}: the raw files hold "
                            f"{len(raw)} image(s); put a data set of at least 2 images there")
        images, divisor = self.preprocess(raw)
        return DeviceData(images.to(device), divisor)

    def _missing_message(self, root: Path, err: Exception) -> str:
        return (f"{self.name} not found under data root {root} ({err}). Fetch it with "
                f"`python -m symvae.data fetch {FETCH_NAMES[self.name]} --root {root}` "
                "or point --data_root / SYMVAE_DATA at a folder that holds it.")


def _try_fetch(name: str, root: Path) -> None:
    from symvae.data import fetch
    print(f"{name}: not under {root}; fetching it once", file=sys.stderr)
    try:
        print(fetch.fetch_dataset(name, root), file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - any failure ends in the one clear message of load()
        print(f"{name}: fetch failed: {err}", file=sys.stderr)


class DeviceData:
    """The image set on the training device, and the authors' batch sampler.

    As in the authors' mnist.py/fmnist.py: the set starts in its stored order
    (train then test); iteration `count` (from 0) first re-permutes the current
    order at random when count % period == period - 1, period = n // bs, then
    takes the contiguous window of `bs` images at a start drawn uniformly from
    0 .. n - bs - 1 (NumPy's randint(n - bs), here from torch's generator). The
    order is kept as an index on the device, so no image data crosses to the
    host; the state (order, count) is small and goes into checkpoints.
    """

    def __init__(self, images: Tensor, divisor: float):
        self.images, self.divisor = images, divisor
        self.perm: Tensor | None = None  # None: the stored order
        self.count = 0

    def __len__(self) -> int:
        return len(self.images)

    def as_float(self, images: Tensor) -> Tensor:
        return images.float() / self.divisor

    def batch(self, bs: int) -> Tensor:
        """The next training batch, float [bs,1,28,28] in [0,1], before noise."""
        self.advance(bs)
        return self.window(bs)

    def advance(self, bs: int) -> None:
        """The host's part of a draw: redraw the permutation when due.

        A redraw is copied into the existing permutation tensor, so a captured
        CUDA graph that reads it (symvae.learn.capture) sees the new order.
        """
        n = len(self.images)
        period = max(n // bs, 1)
        if self.count % period == period - 1:
            shuffle = torch.randperm(n).to(self.images.device)
            if self.perm is None:
                self.perm = shuffle
            else:
                self.perm.copy_(self.perm[shuffle])
        self.count += 1

    def window(self, bs: int) -> Tensor:
        """The device's part: a random window of the current order, drawn and gathered on the
        device without a host synchronisation (so that it can be captured in a graph)."""
        n, device = len(self.images), self.images.device
        start = torch.randint(0, max(n - bs, 1), (1,), device=device)  # bs == n: the whole set
        index = start + torch.arange(bs, device=device)
        if self.perm is not None:
            index = self.perm.index_select(0, index)
        return self.as_float(self.images.index_select(0, index))

    def state_dict(self) -> dict:
        return {"perm": None if self.perm is None else self.perm.cpu(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        perm = state.get("perm")
        if perm is not None and len(perm) != len(self.images):
            return  # another data set: start afresh
        self.perm = None if perm is None else perm.to(self.images.device)
        # files before "count" kept the draws since the last shuffle: the next one falls alike
        self.count = int(state["count"]) if "count" in state else int(state["since_shuffle"]) - 1
