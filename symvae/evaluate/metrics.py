"""Figures for small image sets beside FID, from the same Inception features, and the
test-set log-likelihood.

- KID (Bińkowski et al., 2018): the unbiased estimate of the squared MMD of the two feature
  sets under the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3. FID from n images is
  biased upward by an amount that depends on n; KID's estimate is unbiased at any n. The
  sets are cut into B >= 10 disjoint blocks (of at most 1,000 images, the usual subset
  size); KID is the mean of the blocks' unbiased estimates and its standard error
  sd / sqrt(B): disjoint blocks of independent images give independent estimates, so the
  error is honest (overlapping random subsets, as torchmetrics' class draws them, are not
  independent: their spread is not the error of their mean). Each block's estimate is
  torchmetrics' `poly_mmd`.
- Precision and recall (Kynkäänniemi et al., 2019): a set's manifold is the union of balls
  around its points, each of radius the distance to the point's k-th nearest neighbour in
  its own set (k = 3, the paper's and torch-fidelity's default). Precision: the fraction of
  generated points inside the data's manifold; recall: the fraction of data points inside
  the generated manifold. Recall falls when a limiting chain collapses onto a few modes.
  Our own few lines of torch (the GPU machine and plain installs lack torch-fidelity and
  prdc; prdc also needs scikit-learn); tests cross-check them against torch-fidelity's
  implementation and a direct NumPy computation.
- log p(x) by importance sampling with the encoder as proposal:
  log (1/K) sum_k p(z_k, x) / q(z_k|x), z_k ~ q(z|x). Its expectation is a lower bound
  of log p(x) (Jensen) that tightens as K grows (K = 1: the ELBO's single-sample estimate).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from symvae.model.hvae import HVAE

KID_BLOCK = 1000  # images per block at most (the usual KID subset size)
KID_MIN_BLOCKS = 10  # blocks at least, for a standard error from their spread
PR_K = 3  # nearest neighbour that sets a point's radius (Kynkäänniemi et al.)
METRIC_IMAGES = 10_000  # images per set that KID and precision/recall use at most
DIST_CHUNK = 2048  # rows of a distance matrix at a time
SET_FIGURES = ("kid", "kid_se", "precision", "recall")  # per image set, beside its FID
# results-record fields of the score command (symvae.evaluate.fid): {set}_{figure}, and metric_n
RECORD_FIGURES = tuple(f"{s}_{f}" for s in ("random_code", "limiting") for f in SET_FIGURES)


def _float(x: Tensor) -> Tensor:
    """float64 where the device has it (MPS does not): distances compared with <= and
    kernel sums of a million terms stay exact enough that results do not depend on blocking."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


# --- KID -----------------------------------------------------------------------------------
def kid_blocks(n: int) -> tuple[int, int]:
    """(blocks, images per block) for sets of n images: at least KID_MIN_BLOCKS blocks of at
    most KID_BLOCK images, every image used when n allows; needs n >= 2 * KID_MIN_BLOCKS."""
    if n < 2 * KID_MIN_BLOCKS:
        raise ValueError(f"KID needs at least {2 * KID_MIN_BLOCKS} images per set, got {n}")
    size = min(KID_BLOCK, n // KID_MIN_BLOCKS)
    return n // size, size


def kid(real: Tensor, fake: Tensor) -> tuple[float, float]:
    """(KID, its standard error) of two feature sets [n, d]; the first min(len) rows of each."""
    from torchmetrics.image.kid import poly_mmd
    n = min(len(real), len(fake))
    blocks, size = kid_blocks(n)
    real, fake = _float(real[:blocks * size]), _float(fake[:blocks * size])
    values = torch.stack([poly_mmd(real[i * size:(i + 1) * size], fake[i * size:(i + 1) * size])
                          for i in range(blocks)])
    return float(values.mean()), float(values.std() / math.sqrt(blocks))


# --- precision and recall --------------------------------------------------------------------
def kth_neighbour_radii(feats: Tensor, k: int = PR_K) -> Tensor:
    """Distance of each row to its k-th nearest other row, [n]."""
    if len(feats) <= k:
        raise ValueError(f"precision/recall need more than {k} images per set, got {len(feats)}")
    radii = [torch.cdist(part, feats).kthvalue(k + 1, dim=1).values  # +1: the point itself
             for part in feats.split(DIST_CHUNK)]
    return torch.cat(radii)


def coverage(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Fraction of `points` inside at least one ball (centres, radii)."""
    inside = [(torch.cdist(part, centres) <= radii).any(dim=1) for part in points.split(DIST_CHUNK)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = PR_K) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` against data features `real`."""
    real, fake = _float(real), _float(fake)
    precision = coverage(fake, real, kth_neighbour_radii(real, k))
    recall = coverage(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall


def set_figures(real: Tensor, fake: Tensor) -> dict[str, float | int]:
    """KID with its standard error, precision and recall, on the first METRIC_IMAGES of each
    set (the same number from both)."""
    m = min(len(real), len(fake), METRIC_IMAGES)
    real, fake = real[:m], fake[:m]
    value, se = kid(real, fake)
    precision, recall = precision_recall(real, fake)
    return {"kid": value, "kid_se": se, "precision": precision, "recall": recall,
            "metric_n": m}


# --- log-likelihood ------------------------------------------------------------------------
@torch.no_grad()
def log_weights(model: HVAE, x: Tensor, k: int) -> Tensor:
    """log p(z, x) - log q(z|x) for K draws z ~ q(z|x) per image: [B, K]."""
    xs = x.repeat_interleave(k, 0)
    z, _ = model.sample_q(xs)
    log_p = -model.nz0 * math.log(2.0) - sum(model.nll_p_terms(z, xs))
    log_q = -sum(model.nll_q_terms(z, xs))
    return (log_p - log_q).view(len(x), k)


@torch.no_grad()
def importance_log_likelihood(model: HVAE, x: Tensor, k: int, bs: int = 100) -> Tensor:
    """The importance-sampled estimate of log p(x) per image, [N] float64, K draws each."""
    out = []
    for part in x.split(max(1, bs)):
        w = log_weights(model, part, k).double()
        out.append(torch.logsumexp(w, dim=1) - math.log(k))
    return torch.cat(out)


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error over independent values."""
    values = values.double()
    se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), se
