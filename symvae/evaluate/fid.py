"""FID of a trained model's samples against its data, in memory (SPEC §6, the authors' table).

Run inside an experiment folder:

    python -m symvae fid --call_prefix 0 --nz0 30 --nz1 100 [--n 70000] [--chain_steps 1000]

It draws the random-code and limiting image sets exactly as generate_data.py
would write them (same seed, same --bs: same images), feeds them to pytorch-fid's
Inception network as pytorch-fid reads the PNG files (8-bit, grey copied to RGB,
/255), and compares their pool3 statistics with those of the first --n data
images, cached once per dataset and size as a pytorch-fid .npz (keys mu, sigma).
The row is printed in the format of the authors' table and appended to fid_results.md
and fid_results.json in the folder. Beside each FID it prints and records, from the
same features of at most 10,000 images per set, KID with its standard error and
precision and recall (symvae.evaluate.metrics): FID from few images is biased upward by an
amount that depends on their number, KID is not, and recall shows a chain that
collapsed onto a few modes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from symvae.cli import (
    check_flags,
    fail,
    interruptible,
    load_data,
    model_flags,
    new_parser,
    pick_device,
    seed_everything,
)
from symvae.data.datasets import Dataset, DeviceData
from symvae.data.raw import default_data_root
from symvae.entry import cannot_write, details_beside, parse_args
from symvae.evaluate.export import image_chunks
from symvae.evaluate.fid_folders import score_folders
from symvae.evaluate.frechet import (
    DIMS,
    POOL3,
    Features,
    FeatureStats,
    add_images,
    feature_stats,
    frechet_distance,
    inception_features,
)
from symvae.evaluate.generate import load_trained
from symvae.evaluate.metrics import METRIC_IMAGES, set_figures
from symvae.experiment import load_model_class
from symvae.ground import atomic_write, atomic_write_all
from symvae.learn import checkpoint as ckpt_io
from symvae.learn import runtime

RESULTS = ("fid_results.md", "fid_results.json")
TABLE_HEAD = ("| method/tag | random code FID | limiting FID | n | chain steps | date "
              "| random code KID | limiting KID | random code precision / recall "
              "| limiting precision / recall |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
SETS = ("random_code", "limiting")

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
        atomic_write(path, lambda f: np.savez_compressed(f, **fields))
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
    """Add one row to fid_results.md and one record to the list in fid_results.json, both
    files changed together (ground.atomic_write_all)."""
    md, js = (folder / name for name in RESULTS)
    records = json.loads(js.read_text(encoding="utf-8")) if js.is_file() else []
    records.append(record)
    row = (f"| {record['label']} | {record['random_code_fid']:.4f} | {record['limiting_fid']:.4f} "
           f"| {record['n']} | {record['chain_steps']} | {record['date']} "
           + "".join(f"| {kid_text(record, s)} " for s in SETS)
           + "".join(f"| {pr_text(record, s)} " for s in SETS) + "|\n")
    text = md.read_text(encoding="utf-8") if md.is_file() else TABLE_HEAD
    lines = text.splitlines(keepends=True)
    if lines[:2] != TABLE_HEAD.splitlines(keepends=True):  # a file of the six-column format:
        text = TABLE_HEAD + "".join(lines[2:])  # its rows stay, their new cells empty
    atomic_write_all({js: (json.dumps(records, indent=1) + "\n").encode(),
                              md: (text + row).encode()})


def results_problem(folder: Path) -> str | None:
    """What keeps the results files in `folder` from taking another row (None: nothing).

    fid_results.json must be a list of records (objects), fid_results.md UTF-8 text; either
    may be absent, neither may be a folder."""
    md, js = (folder / name for name in RESULTS)
    for path in (js, md):
        if path.exists() and not path.is_file():
            return f"{path} is a folder, but the results are written there; move it away"
    for path in (js, md):
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            records = json.loads(text) if path == js else []
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("not a list of records")
        except UnicodeDecodeError as err:
            return (f"{path}: unreadable results file (byte {err.start} is not UTF-8 text); "
                    "move it away or delete it")
        except (ValueError, OSError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
            return f"{path}: unreadable results file ({reason}); move it away or delete it"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable; run the score command in a writable experiment folder"
    return None


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
    problem = results_problem(folder)
    if problem:
        fail(problem)


def warn_if_singular(n: int, dims: int) -> None:
    """One line of ours: n images give covariances of rank below n, so with n <= dims features
    they are singular and the matrix square root is inexact (frechet_distance then adds
    SINGULAR_EPS to the diagonals, as pytorch-fid does)."""
    if n <= dims:
        print(f"note: --n {n} images for {dims} features: the covariance matrices are singular, "
              f"so the FID is only approximate; use --n above {dims} for FIDs to compare with "
              "others", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = new_parser(
        description="FID of random-code and limiting samples against the data, in memory; "
                    "run inside an experiment folder.")
    model_flags(p)
    p.add_argument("--n", type=int, default=70000,
                   help="images per set (default 70,000; at most the data set's size): the "
                        "first N data images in stored order (the training images first), N "
                        "random-code and N limiting samples")
    p.add_argument("--chain_steps", type=int, default=1000,
                   help="sampled steps of each limiting chain before its output step")
    p.add_argument("--bs", type=int, default=1000,
                   help="chains run side by side (as generate_data.py's --bs: same seed and bs, "
                        "same images)")
    p.add_argument("--feature_bs", type=int, default=50,
                   help="images per Inception call (default: 50, as pytorch-fid's)")
    p.add_argument("--dims", type=int, choices=DIMS, default=POOL3,
                   help="Inception features compared, as pytorch-fid's --dims: 2048 (pool3) as "
                        "the authors'; the early blocks' FIDs compare with nothing")
    p.add_argument("--data_root", default=None, help="as for main_sym.py")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("folders", nargs="*", metavar="DIR",
                   help="two folders of images (e.g. generated_data/sym/images and "
                        "lim_images): their FID, as pytorch-fid gives it, instead of a model's")
    return p


def main(argv: list[str] | None = None, features: Features | None = None) -> int:
    """The score command; `features` replaces the Inception network (tests).
    Ctrl-C or SIGTERM stop it with 130 or 143, before a row is appended."""
    return interruptible(lambda: score(argv, features), "fid")


def score(argv: list[str] | None, features: Features | None) -> int:
    """main() without its signal handling."""
    args = parse_args(parser(), argv)
    if args.folders:  # two folders of images, as pytorch-fid takes them
        check_flags(args)
        return score_folders(args, features)
    folder = Path.cwd()
    try:
        model_cls = load_model_class(folder)
    except FileNotFoundError as err:
        fail(str(err))
    check_flags(args)
    details_beside(Path.cwd() / "logs", f"error-fid-{args.call_prefix}")
    if args.n < 2:
        fail(f"--n {args.n}: FID needs at least 2 images per set (the authors use 70000)")
    check_results(folder)
    device = pick_device(args.device)
    load_trained(model_cls, args, device)  # refuse a missing or bad model before Inception
    runtime.configure(device, tf32=args.tf32, strict_fp32=args.fp32_strict)
    if features is None:  # built before seeding: building modules draws random numbers
        try:
            features = inception_features(device, args.dims)
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
        args.feature_bs, keep, kind="pool3" if args.dims == POOL3 else f"dims{args.dims}",
        progress=not args.no_progress)
    warn_if_singular(n, len(data_mu))
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
        print("\n| set | KID ± se | precision | recall | images |\n"
              "| --- | --- | --- | --- | --- |")
        for name, title in zip(SETS, ("random code", "limiting"), strict=True):
            print(f"| {title} | {kid_text(record, name)} | {record[name + '_precision']:.3f} "
                  f"| {record[name + '_recall']:.3f} | {record['metric_n']} |")
    try:
        append_results(folder, record)
    except OSError as err:
        fail(f"{cannot_write(err, 'the results')} to keep the row printed above", code=4)
    print(f"appended to {folder / RESULTS[0]} and {folder / RESULTS[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
