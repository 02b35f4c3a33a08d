"""FID of a trained model's samples against its data, in memory (SPEC §6, the seed's table).

Run inside an experiment folder:

    python -m symvae.fid --call_prefix 0 --nz0 30 --nz1 100 [--n 70000] [--chain_steps 1000]

It draws the random-code and limiting image sets exactly as generate_data.py
would write them (same seed, same --bs: same images), feeds them to pytorch-fid's
Inception network as pytorch-fid reads the PNG files (8-bit, grey copied to RGB,
/255), and compares their pool3 statistics with those of the first --n data
images, cached once per dataset and size as a pytorch-fid .npz (keys mu, sigma).
The row is printed in the seed table's format and appended to fid_results.md
and fid_results.json in the folder. Beside each FID it prints and records, from the
same features of at most 10,000 images per set, KID with its standard error and
precision and recall (symvae.metrics): FID from few images is biased upward by an
amount that depends on their number, KID is not, and recall shows a chain that
collapsed onto a few modes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from symvae import checkpoint as ckpt_io
from symvae import runtime
from symvae.cli import (
    check_model_args,
    fail,
    interruptible,
    load_data,
    model_flags,
    non_negative,
    pick_device,
    positive,
    seed_everything,
)
from symvae.data import Dataset, DeviceData, default_data_root
from symvae.experiment import load_model_class
from symvae.export import image_chunks
from symvae.generate import load_trained
from symvae.metrics import METRIC_IMAGES, set_figures
from symvae.sampling import to_uint8

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid loads from the hub
POOL3 = 2048  # pool3 features: pytorch-fid's default and the seed's numbers
# Measured on the 2-core CPU (see README): channels_last runs Inception faster there.
CHANNELS_LAST_ON_CPU = True
RESULTS = ("fid_results.md", "fid_results.json")
TABLE_HEAD = ("| method/tag | random code FID | limiting FID | n | chain steps | date "
              "| random code KID | limiting KID | random code precision / recall "
              "| limiting precision / recall |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
SETS = ("random_code", "limiting")

Features = Callable[[Tensor], Tensor]  # [B,3,H,W] in [0,1] -> features [B,D]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    pytorch-fid's own implementation, so that the numbers are the seed's.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance
    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def inception_input(images: Tensor) -> Tensor:
    """Images [B,1,H,W] in [0,1] -> [B,3,H,W] exactly as pytorch-fid reads their PNG files:
    8-bit as generate_data.py writes them, grey copied to RGB, then uint8 / 255."""
    grey = to_uint8(images.float()).to(torch.float32).div_(255)
    return grey.expand(-1, 3, -1, -1)


def weights_path() -> Path:
    """Where pytorch-fid finds its Inception weights: the torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def inception_features(device: torch.device) -> Features:
    """pytorch-fid's InceptionV3 on `device`: images -> pool3 features [B, 2048].

    Raises FileNotFoundError (with the fix) when the weights file is not in the hub.
    """
    if not weights_path().is_file():
        raise FileNotFoundError(f"{weights_path()}: pytorch-fid's Inception weights are missing; "
                                "run `python -m symvae.data fetch inception`")
    from pytorch_fid.inception import InceptionV3
    try:
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[POOL3]]).to(device).eval()
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file, however torch says it
        raise FileNotFoundError(f"{weights_path()}: pytorch-fid's Inception weights are damaged "
                                f"({type(err).__name__}); delete the file and run `python -m "
                                "symvae.data fetch inception`") from None
    fmt = torch.channels_last if device.type == "cpu" and CHANNELS_LAST_ON_CPU \
        else torch.contiguous_format
    net = net.to(memory_format=fmt)

    def features(x: Tensor) -> Tensor:
        return net(x.contiguous(memory_format=fmt))[0].flatten(1)
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


def data_statistics(dataset: Dataset, data: DeviceData, n: int, cache_dir: Path,
                    features: Features, bs: int, kind: str = "pool3",
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the first n data images, from CACHE_DIR's .npz when it matches."""
    mu, sigma, _ = data_reference(dataset, data, n, cache_dir, features, bs, 0, kind, progress)
    return mu, sigma


def data_reference(dataset: Dataset, data: DeviceData, n: int, cache_dir: Path,
                   features: Features, bs: int, keep: int, kind: str = "pool3",
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """(mu, sigma) of the first n data images and the features of the first `keep` of them
    [keep, D] float32, from CACHE_DIR's .npz when it matches.

    The file is pytorch-fid's format (mu, sigma; usable as `python -m pytorch_fid
    FILE.npz DIR`) plus the digest of the images it was computed from, so a
    changed data set is never scored against stale statistics, and the kept features
    (key `features`) when some were asked for.
    """
    name = dataset.name + (f"-bin{dataset.threshold}" if dataset.threshold is not None else "")
    path = cache_dir / f"{name}-n{n}-{kind}.npz"
    images = data.images[:n]
    digest = hashlib.sha1(images.cpu().numpy().tobytes()).hexdigest()
    cached = read_cache(path, digest)
    step = max(bs, 1000)
    chunks = (data.as_float(images[i:i + step]) for i in range(0, n, step))
    if cached and len(cached.get("features", ())) >= keep:
        kept = cached.get("features", np.zeros((0, 0), np.float32))[:keep]
        return cached["mu"], cached["sigma"], torch.from_numpy(kept)
    if cached:  # statistics without (enough) features: only the kept images again
        bar = tqdm(total=keep, unit="img", desc=f"data features {name}", disable=not progress)
        kept = feature_stats((data.as_float(images[i:i + step]) for i in range(0, keep, step)),
                             features, bs, bar.update, keep).kept()
        mu, sigma = cached["mu"], cached["sigma"]
    else:
        bar = tqdm(total=n, unit="img", desc=f"data statistics {name}", disable=not progress)
        stats = feature_stats(chunks, features, bs, bar.update, keep)
        (mu, sigma), kept = stats.mu_sigma(), stats.kept()
    bar.close()
    fields = {"mu": mu, "sigma": sigma, "digest": digest}
    if keep:
        fields["features"] = kept.cpu().numpy()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_write(path, lambda f: np.savez_compressed(f, **fields))
        print(f"cached the data statistics in {path}", file=sys.stderr)
    except OSError as err:
        print(f"could not cache the data statistics in {path} ({err}); computed afresh next time",
              file=sys.stderr)
    return mu, sigma, kept.cpu()


def read_cache(path: Path, digest: str) -> dict[str, np.ndarray] | None:
    """The cached arrays of `path` when it holds statistics of the images with `digest`."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            if "digest" in f.files and str(f["digest"]) == digest:
                return {k: f[k] for k in f.files}
    except Exception as err:  # noqa: BLE001 - a damaged cache is computed afresh
        print(f"{path}: unreadable cached statistics ({type(err).__name__}); computing them "
              "again", file=sys.stderr)
    return None


def stats_cache_dir(data_root: str | None, folder: Path) -> Path:
    """fid_stats/ under the data root (shared by the experiments on one data set), or under
    the folder's generated_data/ when the data root is not writable."""
    root = Path(data_root) if data_root else default_data_root()
    if os.access(root, os.W_OK):
        return root / "fid_stats"
    return folder / "generated_data" / "fid_stats"


def append_results(folder: Path, record: dict) -> None:
    """Add one row to fid_results.md and one record to the list in fid_results.json."""
    md, js = (folder / name for name in RESULTS)
    records = json.loads(js.read_text()) if js.is_file() else []
    records.append(record)
    ckpt_io.atomic_write(js, lambda f: f.write((json.dumps(records, indent=1) + "\n").encode()))
    row = (f"| {record['label']} | {record['random_code_fid']:.4f} | {record['limiting_fid']:.4f} "
           f"| {record['n']} | {record['chain_steps']} | {record['date']} "
           + "".join(f"| {kid_text(record, s)} " for s in SETS)
           + "".join(f"| {pr_text(record, s)} " for s in SETS) + "|\n")
    text = md.read_text() if md.is_file() else TABLE_HEAD
    lines = text.splitlines(keepends=True)
    if lines[:2] != TABLE_HEAD.splitlines(keepends=True):  # a file of the six-column format:
        text = TABLE_HEAD + "".join(lines[2:])  # its rows stay, their new cells empty
    ckpt_io.atomic_write(md, lambda f: f.write((text + row).encode()))


def kid_text(record: dict, name: str) -> str:
    """`KID ± se` of one image set of a results record, '–' when it has none."""
    value, se = record.get(f"{name}_kid"), record.get(f"{name}_kid_se")
    return "–" if value is None else f"{value:.4f} ± {se:.4f}"


def pr_text(record: dict, name: str) -> str:
    """`precision / recall` of one image set of a results record, '–' when it has none."""
    p, r = record.get(f"{name}_precision"), record.get(f"{name}_recall")
    return "–" if p is None else f"{p:.3f} / {r:.3f}"


def small_sample_figures(data_feats: Tensor, sets: dict[str, FeatureStats]) -> dict:
    """KID ± se, precision and recall of each image set against the data's features, as
    record fields `{set}_kid`, ...; none when the sets are too small for them."""
    out: dict = {}
    for name, stats in sets.items():
        try:
            figures = set_figures(data_feats.to(stats.kept().device), stats.kept())
        except ValueError as err:  # too few images for blocks or neighbours
            print(f"no KID or precision/recall for the {name} set: {err}", file=sys.stderr)
            continue
        out["metric_n"] = figures.pop("metric_n")
        out.update({f"{name}_{k}": v for k, v in figures.items()})
    return out


def check_results(folder: Path) -> None:
    """Fail before any work when the results files cannot take another row."""
    js = folder / RESULTS[1]
    try:
        if js.is_file() and not isinstance(json.loads(js.read_text()), list):
            raise ValueError("not a list of records")
    except ValueError as err:
        fail(f"{js}: unreadable results file ({err}); move it away or delete it")
    if not os.access(folder, os.W_OK):
        fail(f"{folder} is not writable; run the score command in a writable experiment folder")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="FID of random-code and limiting samples against the data, in memory; "
                    "run inside an experiment folder.")
    model_flags(p)
    p.add_argument("--n", type=int, default=70000,
                   help="images per set (default 70,000; at most the data set's size)")
    p.add_argument("--chain_steps", type=int, default=1000,
                   help="sampled steps of each limiting chain before its output step")
    p.add_argument("--bs", type=int, default=1000,
                   help="chains run side by side (as generate_data.py's --bs: same seed and bs, "
                        "same images)")
    p.add_argument("--feature_bs", type=int, default=50,
                   help="images per Inception call (pytorch-fid's default is 50)")
    p.add_argument("--data_root", default=None, help="as for main_sym.py")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None, features: Features | None = None) -> int:
    """The score command; `features` replaces the Inception network (tests).
    Ctrl-C or SIGTERM stop it with 130 or 143, before a row is appended."""
    return interruptible(lambda: score(argv, features))


def score(argv: list[str] | None, features: Features | None) -> int:
    """main() without its signal handling."""
    args = parser().parse_args(argv)
    folder = Path.cwd()
    try:
        model_cls = load_model_class(folder)
    except FileNotFoundError as err:
        fail(str(err))
    check_model_args(args)
    for flag in ("bs", "feature_bs"):
        positive(f"--{flag}", getattr(args, flag))
    non_negative("--chain_steps", args.chain_steps)
    if args.n < 2:
        fail(f"--n {args.n}: FID needs at least 2 images per set (the seed uses 70000)")
    check_results(folder)
    device = pick_device(args.device)
    load_trained(model_cls, args, device)  # refuse a missing or bad model before Inception
    runtime.configure(device, tf32=args.tf32)
    if features is None:  # built before seeding: building modules draws random numbers
        try:
            features = inception_features(device)
        except FileNotFoundError as err:
            fail(str(err))
    seed_everything(args.seed)  # then the same draws as generate_data.py
    model = load_trained(model_cls, args, device)
    method = ckpt_io.load(folder / "models" / f"m_{args.call_prefix}.pt").get("method")
    data = load_data(model_cls.dataset, args.data_root, device)
    n = min(args.n, len(data))
    keep = min(n, METRIC_IMAGES)
    data_mu, data_sigma, data_feats = data_reference(
        model_cls.dataset, data, n, stats_cache_dir(args.data_root, folder), features,
        args.feature_bs, keep, progress=not args.no_progress)
    shot, lim = FeatureStats(keep), FeatureStats(keep)
    bar = tqdm(total=n * (args.chain_steps + 5), unit="img-step", desc="fid",
               disable=args.no_progress)
    for chunk in image_chunks(model, data, n, args.bs, args.chain_steps, bar.update):
        for stats, images in ((shot, chunk.shot), (lim, chunk.limiting)):
            add_images(stats, images, features, args.feature_bs)
            bar.update(len(images))
    bar.close()
    fids = [frechet_distance(*stats.mu_sigma(), data_mu, data_sigma) for stats in (shot, lim)]
    label = f"{method}/{args.call_prefix}" if method else args.call_prefix
    print("| method/tag | random code FID | limiting FID |\n| --- | --- | --- |")
    print(f"| {label} | {fids[0]:.4f} | {fids[1]:.4f} |")
    record = {
        "label": label, "tag": args.call_prefix, "method": method,
        "experiment": model.experiment, "random_code_fid": fids[0], "limiting_fid": fids[1],
        "n": n, "chain_steps": args.chain_steps, "bs": args.bs, "seed": args.seed,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **small_sample_figures(data_feats, dict(zip(SETS, (shot, lim), strict=True)))}
    if "metric_n" in record:
        print("\n| set | KID ± se | precision | recall | images |\n| --- | --- | --- | --- | --- |")
        for name, title in zip(SETS, ("random code", "limiting"), strict=True):
            print(f"| {title} | {kid_text(record, name)} | {record[name + '_precision']:.3f} "
                  f"| {record[name + '_recall']:.3f} | {record['metric_n']} |")
    try:
        append_results(folder, record)
    except OSError as err:
        fail(f"cannot write {err.filename or 'the results'} ({err.strerror or err}); the row is "
             "printed above. Free space or fix permissions to keep it", code=4)
    print(f"appended to {folder / RESULTS[0]} and {folder / RESULTS[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
