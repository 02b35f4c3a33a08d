"""The Fréchet Inception distance itself: pytorch-fid's Inception features of images as
pytorch-fid reads them, their running mean and covariance, and the distance between two
such statistics. symvae.evaluate.fid scores a model with them; symvae.evaluate.fid_folders
two folders of images.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from symvae.model.sampling import to_uint8

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid loads from the hub
POOL3 = 2048  # pool3 features: pytorch-fid's default and the authors' numbers
DIMS = (64, 192, 768, POOL3)  # the feature blocks of pytorch-fid's Inception (its --dims)
# Measured on the 2-core CPU (docs/evaluate.md, "FID scores"): channels_last runs Inception
# faster there.
CHANNELS_LAST_ON_CPU = True
Features = Callable[[Tensor], Tensor]  # [B,3,H,W] in [0,1] -> features [B,D]


SINGULAR_EPS = 1e-6  # added to both covariances' diagonals when their product is singular


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm, called as every SciPy version accepts it (1.18 dropped `disp`),
    with its 'singular matrix' remarks silenced: the caller handles that case."""
    import contextlib
    import io
    import warnings

    from scipy import linalg
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The computation of pytorch-fid 0.3.0 (the authors' FID), step for step, so the numbers
    are theirs (tested to 1e-9), but not its code, which passes an argument that SciPy 1.18
    removed: where the product's square root is not finite (a singular product, e.g. fewer
    images than features), SINGULAR_EPS is added to both diagonals and the root taken
    again; an imaginary part is dropped if its diagonal is within 1e-3 of zero, else
    ValueError.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different sizes: {mu1.shape} and {mu2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # score() has said so once (warn_if_singular)
        offset = np.eye(sigma1.shape[0]) * SINGULAR_EPS
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the "
                             "square root of the covariance product")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_input(images: Tensor) -> Tensor:
    """Images [B,1,H,W] in [0,1] -> [B,3,H,W] exactly as pytorch-fid reads their PNG files:
    8-bit as generate_data.py writes them, grey copied to RGB, then uint8 / 255."""
    grey = to_uint8(images.float()).to(torch.float32).div_(255)
    return grey.expand(-1, 3, -1, -1)


def weights_path() -> Path:
    """Where pytorch-fid finds its Inception weights: the torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def inception_features(device: torch.device, dims: int = POOL3) -> Features:
    """pytorch-fid's InceptionV3 on `device`: images -> pool3 features [B, 2048], or those of
    the earlier block of `dims` features, average-pooled as pytorch-fid pools them.

    Raises FileNotFoundError (with the fix) when the weights file is not in the hub.
    """
    if not weights_path().is_file():
        raise FileNotFoundError(f"{weights_path()}: pytorch-fid's Inception weights are missing; "
                                "run `python -m symvae.data fetch inception`")
    from pytorch_fid.inception import InceptionV3
    try:
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).to(device).eval()
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file, however torch says it
        raise FileNotFoundError(f"{weights_path()}: pytorch-fid's Inception weights are damaged "
                                f"({type(err).__name__}); delete the file and run `python -m "
                                "symvae.data fetch inception`") from None
    fmt = torch.channels_last if device.type == "cpu" and CHANNELS_LAST_ON_CPU \
        else torch.contiguous_format
    net = net.to(memory_format=fmt)

    def features(x: Tensor) -> Tensor:
        out = net(x.contiguous(memory_format=fmt))[0]
        if out.shape[2:] != (1, 1):  # an early block: pooled as pytorch-fid's get_activations
            out = torch.nn.functional.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)
    return features


class FeatureStats:
    """Running mean and covariance of feature vectors, in float64 like pytorch-fid's
    np.mean / np.cov; sums are taken around the first batch's mean to keep them exact.
    The first `keep` feature vectors themselves are kept too (float32), for KID and
    precision/recall."""

    def __init__(self, keep: int = 0) -> None:
        self.n = 0
        self.shift = self.sum = self.outer = None
        self.keep, self.kept_rows = keep, []

    def add(self, feats: Tensor) -> None:
        # sums stay on the GPU (the outer products would slow a fast GPU down on the host);
        # MPS has no float64, so they go to the CPU there
        device = "cpu" if feats.device.type == "mps" else feats.device
        f = feats.detach().to(device, torch.float64)
        room = self.keep - sum(map(len, self.kept_rows))
        if room > 0:
            self.kept_rows.append(feats.detach()[:room].to(device, torch.float32))
        if self.shift is None:
            self.shift = f.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64,
                                     device=device)
        d = f - self.shift
        self.n += len(d)
        self.sum += d.sum(0)
        self.outer += d.T @ d

    def kept(self) -> Tensor:
        """The first `keep` feature vectors added (fewer if fewer were added), [m, D]."""
        return torch.cat(self.kept_rows) if self.kept_rows else torch.zeros(0, 0)

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, unbiased covariance) of all features added; needs at least 2."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        m = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return (self.shift + m).cpu().numpy(), sigma.cpu().numpy()


def add_images(stats: FeatureStats, images: Tensor, features: Features, bs: int) -> None:
    """Add the features of images [N,1,H,W] in [0,1], `bs` images per network call."""
    with torch.inference_mode():
        for i in range(0, len(images), bs):
            stats.add(features(inception_input(images[i:i + bs])))


def image_statistics(chunks: Iterable[Tensor], features: Features, bs: int,
                     on_images: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the features of a stream of image chunks [N,1,H,W] in [0,1]."""
    stats = feature_stats(chunks, features, bs, on_images)
    return stats.mu_sigma()


def feature_stats(chunks: Iterable[Tensor], features: Features, bs: int,
                  on_images: Callable[[int], None] | None = None, keep: int = 0
                  ) -> FeatureStats:
    """The FeatureStats of a stream of image chunks, keeping the first `keep` features."""
    stats = FeatureStats(keep)
    for chunk in chunks:
        add_images(stats, chunk, features, bs)
        if on_images:
            on_images(len(chunk))
    return stats
