"""The GPU check behind scripts/gpu_check.sh: speed, then one row of the authors' table.

    python -m symvae gpu-check OUT [--ref AUTHORS] [--budget_s 400] [--device cuda]
    python -m symvae gpu-check OUT --device cpu --dry-run        # seconds, tiny sizes

0. a preflight that times the fixed costs (imports, data, Inception, one 2048-wide
   matrix square root, one capture with its check) and plans the rest from them;
1. mnist-ladder symmetric and ELBO at batch 1024, ours eager and captured and the
   authors' scripts (with --ref), on the same device in the same run: ms per iteration;
2. both methods trained for as many iterations as the budget allows (at most the
   authors' 200k), then both FIDs on as many images as fit, with 1000-step chains;
3. a summary table beside the authors' figures.
Everything is printed as it happens and kept in OUT as soon as it exists (at most 8
files, for the device machine's return path): gpu_check.md, gpu_check.json,
gpu_check.log (by the script), train_logs.txt, m_sym.pt, m_elbo.pt (fp32 weights
only), img_sym.png, img_elbo.png. A run stopped at its time limit keeps what it had.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from symvae.cli import fail, pick_device
from symvae.ground import REPO_ROOT
from symvae.learn import runtime
from symvae.learn.stats import EXACT_AVERAGE_STEPS
from symvae.reproduce import bench

EXPERIMENT = "mnist-ladder"
METHODS = ("sym", "elbo")
AUTHORS_FIDS = {"sym": (1.6543, 4.1015), "elbo": (3.2227, 36.6440)}  # random code, limiting
AUTHORS_ITERATIONS = 200_000
DEFAULT_BUDGET_S = 400.0  # with Python's start and the shell's unpacking: done by 7 minutes
FULL = {"bs": 1024, "bench_iters": 100, "bench_warmup": 20, "fid_n": 70_000,
        "chain_steps": 1000, "chain_bs": 10_000, "feature_bs": 500, "min_iterations": 1000,
        "max_iterations": AUTHORS_ITERATIONS, "preflight_bs": 256, "min_images": 1000}
DRY = {"bs": 8, "bench_iters": 2, "bench_warmup": 1, "fid_n": 20, "chain_steps": 3,
       "chain_bs": 10, "feature_bs": 10, "min_iterations": 4, "max_iterations": 4,
       "preflight_bs": 8, "min_images": 2}


class Report:
    """Prints each line at once and keeps the markdown report and the JSON record in OUT."""

    def __init__(self, out: Path, info: dict):
        self.out, self.lines, self.record = out, [], {"conditions": info}
        out.mkdir(parents=True, exist_ok=True)

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "gpu_check.md").write_text("\n".join(self.lines) + "\n")

    def keep(self, key: str, value) -> None:
        self.record[key] = value
        (self.out / "gpu_check.json").write_text(json.dumps(self.record, indent=1) + "\n")


def speed(report: Report, device: torch.device, sizes: dict, ref: Path | None,
          data_root: str | None) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per iteration, ours eager and captured and the authors'; returns, per
    method in seconds, ours fastest (captured where it replayed) and ours eager."""
    from symvae.authors.scripts import AuthorsMissing, time_authors
    report.say(f"## 1. Speed: {EXPERIMENT}, batch {sizes['bs']}, {device}")
    report.say("| method | ours eager ms/it | ours captured ms/it | authors ms/it | "
               "authors / ours (fastest) |")
    report.say("| --- | --- | --- | --- | --- |")
    fastest, eager, rows = {}, {}, []
    for method in METHODS:
        row = {"method": method}
        for mode in ("eager", "captured"):
            if mode == "captured" and device.type != "cuda":
                continue
            try:
                r = bench.bench_pair(EXPERIMENT, method, sizes["bs"], device,
                                     sizes["bench_iters"], sizes["bench_warmup"], False,
                                     captured=mode == "captured")
            except Exception as err:  # noqa: BLE001 - one failed figure must not end the check
                report.say(f"{method} {mode}: not timed ({type(err).__name__}: {err})")
                continue
            for note in r.get("capture_notes", []):
                report.say(f"{method} {mode}: {note.lstrip('# ')}")
            if mode == "captured" and not r["replayed"]:
                report.say(f"{method}: the captured figure ran eagerly (see above); not kept")
                continue
            row[mode] = r["seconds"]
        if ref is not None:
            try:
                times, _ = time_authors(ref, EXPERIMENT, method, sizes["bs"], str(device),
                                        sizes["bench_iters"], sizes["bench_warmup"],
                                        torch.get_num_threads(), data_root and Path(data_root))
                row["authors"] = statistics.median(times)
            except AuthorsMissing as err:  # the run goes on: our figures still count
                report.say(f"authors' code not timed: {err}")
        ours = row.get("captured", row.get("eager"))
        if ours is None:
            report.say(f"{method}: no figure of ours; the training plan uses a guess")
            ours = row.get("authors", 0.05)
        fastest[method] = ours
        eager[method] = row.get("eager", ours)
        ms = [f"{1e3 * row[k]:.3f}" if k in row else "-" for k in ("eager", "captured",
                                                                   "authors")]
        ratio = f"{row['authors'] / ours:.1f}x" if "authors" in row else "-"
        report.say(f"| {method} | {' | '.join(ms)} | {ratio} |")
        rows.append(row)
    report.keep("speed", rows)
    return fastest, eager


def train(report: Report, work: Path, method: str, iterations: int, sizes: dict,
          device: torch.device, data_root: str | None) -> dict:
    """Our main_*.py in a copy of the experiment folder; returns iterations and seconds."""
    script = {"sym": "main_sym.py", "elbo": "main_elbo.py"}[method]
    cmd = [sys.executable, script, "--call_prefix", method, "--nz0", "30", "--nz1", "100",
           "--stepsize", "1e-4", "--bs", str(sizes["bs"]), "--niterations", str(iterations),
           "--save_period", str(iterations), "--log_period", str(max(iterations // 20, 1)),
           "--device", str(device), "--seed", "0", "--no_progress", "--overwrite"]
    code, seconds = run_child(report, cmd, work, data_root)
    if code != 0:  # the other method and what this one saved still come back
        report.say(f"{method}: training failed (exit status {code}); see the output above")
        return {"failed": code, "seconds": seconds}
    report.say(f"{method}: {iterations} iterations in {seconds:.1f} s")
    return {"iterations": iterations, "seconds": seconds}


def run_child(report: Report, cmd: list[str], work: Path, data_root: str | None
              ) -> tuple[int, float]:
    """Run one of our commands in `work`, its output going straight to ours;
    returns (exit status, wall seconds)."""
    if data_root:
        cmd = [*cmd, "--data_root", data_root]
    report.say(f"$ {' '.join(cmd[1:])}")
    t = time.perf_counter()
    code = subprocess.run(cmd, cwd=work, check=False).returncode
    return code, time.perf_counter() - t


def fid_probe(work: Path, method: str, sizes: dict, device: torch.device) -> float:
    """Estimated seconds per generated image of the score command (chain + Inception),
    from 20 chain steps of chain_bs chains and one Inception batch."""
    from symvae.evaluate.frechet import inception_features, inception_input
    from symvae.experiment import load_model_class
    from symvae.model.sampling import chain_start, run_chain
    model = load_model_class(work)(30, 100).to(device)
    model.load_state_dict(torch.load(work / "models" / f"m_{method}.pt", map_location=device,
                                     weights_only=False)["model"])
    steps, n = min(20, sizes["chain_steps"]), sizes["chain_bs"]
    start = chain_start(model, model.fid_chain_start, n)
    run_chain(model, start, 1)  # untimed: the first call at this size picks cuDNN's kernels
    bench.sync(device)
    t = time.perf_counter()
    run_chain(model, start, steps)
    bench.sync(device)
    chain = (time.perf_counter() - t) / steps * sizes["chain_steps"] / n
    features = inception_features(device)
    x = torch.rand(sizes["feature_bs"], 1, 28, 28, device=device)  # any images: a timing
    with torch.inference_mode():
        features(inception_input(x))  # warm-up
        bench.sync(device)
        t = time.perf_counter()
        features(inception_input(x))
        bench.sync(device)
    inception = (time.perf_counter() - t) / len(x)
    return chain + 2 * inception  # two image sets per generated index


def score(report: Report, work: Path, method: str, n: int, sizes: dict,
          device: torch.device, data_root: str | None) -> dict:
    """Our score command (symvae.evaluate.fid) on the trained model."""
    cmd = [sys.executable, "-m", "symvae", "fid", "--call_prefix", method, "--nz0", "30",
           "--nz1", "100", "--n", str(n), "--chain_steps", str(sizes["chain_steps"]),
           "--bs", str(sizes["chain_bs"]), "--feature_bs", str(sizes["feature_bs"]),
           "--device", str(device), "--seed", "0", "--no_progress"]
    code, seconds = run_child(report, cmd, work, data_root)
    if code != 0:
        report.say(f"scoring failed (exit status {code}); see the output above")
        return {"n": n, "seconds": seconds}
    record = json.loads((work / "fid_results.json").read_text())[-1]
    return {"n": n, "seconds": seconds, "random_code_fid": record["random_code_fid"],
            "limiting_fid": record["limiting_fid"]}


def summary(report: Report, results: dict) -> None:
    from symvae.evaluate.frechet import weights_path
    from symvae.reproduce.gpu_assets import ORIGIN_NOTE
    note = weights_path().parent / ORIGIN_NOTE
    origin = note.read_text().strip() if note.is_file() else "pytorch-fid's fp32 file"
    report.say("## 3. Summary (the authors' row: 200k iterations, 70,000 images)")
    report.say(f"Inception weights: {origin}.")
    report.say("| method | iterations | train s | ms/it | FID n | FID s | random code FID | "
               "limiting FID | authors' random code | authors' limiting |")
    report.say("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method, r in results.items():
        if "iterations" not in r:
            continue
        fid = [f"{r[k]:.4f}" if k in r else "-" for k in ("random_code_fid", "limiting_fid")]
        report.say(f"| {method} | {r['iterations']} | {r['seconds']:.1f} | "
                   f"{1e3 * r['seconds'] / r['iterations']:.3f} | {r.get('n', '-')} | "
                   f"{r.get('fid_seconds', 0):.1f} | {' | '.join(fid)} | "
                   f"{AUTHORS_FIDS[method][0]} | {AUTHORS_FIDS[method][1]} |")


def bring_back(out: Path, work: Path, method: str) -> None:
    """One method's weights (fp32, model only) and grid into OUT, and every training log so
    far into OUT/train_logs.txt: called as soon as the method's training ends."""
    model = work / "models" / f"m_{method}.pt"
    if model.is_file():
        state = torch.load(model, map_location="cpu", weights_only=False)["model"]
        torch.save({k: v.float() for k, v in state.items()}, out / f"m_{method}.pt")
    if (work / "images" / f"img_{method}.png").is_file():
        shutil.copy2(work / "images" / f"img_{method}.png", out / f"img_{method}.png")
    logs = [f"==> {log.name} <==\n{log.read_text()}"
            for log in sorted((work / "logs").glob("log-*.txt"))]
    (out / "train_logs.txt").write_text("\n".join(logs))


def plan_iterations(seconds_left: float, per_iteration: float, sizes: dict) -> int:
    """Iterations that fit in `seconds_left` (10% margin, start-up costs aside), in
    thousands, between min_iterations and max_iterations (the authors' 200k)."""
    fit = int(seconds_left / (1.1 * per_iteration))
    if fit >= 1000:
        fit -= fit % 1000
    return max(sizes["min_iterations"], min(sizes["max_iterations"], fit))


def plan_images(seconds_left: float, fixed: float, per_image: float, scores_left: int,
                sizes: dict) -> int:
    """Images for the next score: this score's share of the time left after its fixed costs
    (child start, data, Inception, two Fréchet distances) and 10 s of margin, in thousands,
    at most fid_n; 0 when fewer than min_images fit (a score that cannot finish is skipped).
    1.5 per image: a first score also computes the data statistics, one more Inception pass.
    """
    fit = int((seconds_left / scores_left - fixed - 10) / (1.5 * per_image))
    if fit >= 1000:
        fit -= fit % 1000
    return min(sizes["fid_n"], fit) if fit >= sizes["min_images"] else 0


def timed(fn) -> tuple[object, float]:
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def preflight(report: Report, device: torch.device, sizes: dict, data_root: str | None,
              dry: bool) -> dict[str, float]:
    """The fixed costs, each timed once (seconds), and one capture with its check: what the
    plan needs before anything long starts. Refuses (exit 2) what would fail later."""
    import numpy as np

    from symvae.evaluate.frechet import POOL3, frechet_distance, inception_features, inception_input
    from symvae.experiment import load_model_class
    report.say("## 0. Preflight")
    costs: dict[str, float] = {}
    try:
        _, costs["import_pytorch_fid"] = timed(lambda: __import__("pytorch_fid.inception"))
    except ImportError as err:
        fail(f"pytorch-fid is not importable ({err}); carry .gpu/ (make gpu-assets)")
    cmd = [sys.executable, "-c", "import symvae.learn.train, symvae.evaluate.fid"]
    _, costs["child_start"] = timed(lambda: subprocess.run(cmd, check=True, cwd=REPO_ROOT))
    dataset = load_model_class(EXPERIMENT).dataset
    _, costs["data_load"] = timed(lambda: dataset.load(data_root, device))
    try:
        features, costs["inception_build"] = timed(lambda: inception_features(device))
    except FileNotFoundError as err:
        fail(f"{err} (on a GPU machine: carry .gpu/ from `make gpu-assets`)")
    x = inception_input(torch.rand(sizes["feature_bs"], 1, 28, 28, device=device))
    with torch.inference_mode():
        features(x)
        bench.sync(device)
        _, batch = timed(lambda: (features(x), bench.sync(device)))
    costs["inception_per_image"] = batch / len(x)
    dim = 64 if dry else POOL3
    rng = np.random.default_rng(0)
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    sigma = a @ a.T + np.eye(dim)
    _, costs["frechet"] = timed(lambda: frechet_distance(np.zeros(dim), sigma, np.ones(dim),
                                                         sigma + np.eye(dim)))
    if device.type == "cuda":
        row, costs["capture_check"] = timed(lambda: bench.bench_pair(
            EXPERIMENT, "sym", sizes["preflight_bs"], device, 2, 0, False, captured=True))
        for note in row["capture_notes"]:
            report.say(f"capture at batch {sizes['preflight_bs']}: {note.lstrip('# ')}")
    report.say("fixed costs: " + ", ".join(f"{k} {v:.3g} s" for k, v in costs.items()))
    report.keep("preflight", costs)
    return costs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder for the results")
    p.add_argument("--device", default="cuda")
    p.add_argument("--ref", type=Path, default=None, help="the authors' repository checkout")
    p.add_argument("--data_root", default=None)
    p.add_argument("--budget_s", type=float, default=None,
                   help=f"seconds for the whole check (default {DEFAULT_BUDGET_S:.0f}; no limit "
                        "with --dry-run, whose sizes are fixed)")
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products too (default off)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes (tests, CPU)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    device = pick_device(args.device)
    if args.ref is not None and not (args.ref / EXPERIMENT / "hvae.py").is_file():
        fail(f"--ref {args.ref}: no {EXPERIMENT}/hvae.py; give the authors' repository")
    sizes = DRY if args.dry_run else FULL
    if args.budget_s is None:
        args.budget_s = 1e9 if args.dry_run else DEFAULT_BUDGET_S
    applied = runtime.configure(device, tf32=args.tf32)  # as training configures itself
    info = bench.conditions(device, applied)
    info["commit"] = os.environ.get("SYMVAE_COMMIT", "unknown")
    info["precision"] = runtime.precision_note(applied)
    if device.type == "cuda":
        info["driver_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    report = Report(args.out, info)
    report.say(f"# GPU check {info['date']} on {info.get('gpu', device)}, torch "
               f"{torch.__version__}, {info['precision']}, commit {info['commit']}")
    costs = preflight(report, device, sizes, args.data_root, args.dry_run)
    per_iteration, eager = speed(report, device, sizes, args.ref, args.data_root)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)
    report.say("## 2. Training and FID")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp) / EXPERIMENT
        shutil.copytree(REPO_ROOT / EXPERIMENT, work, ignore=shutil.ignore_patterns(
            "images", "logs", "models", "generated_data", "__pycache__"))
        # about 55% of what is left goes to training, evenly; each run first starts up
        # (Python, data, the eager exact-average phase, capture), as measured
        for i, method in enumerate(METHODS):
            startup = costs["child_start"] + costs["data_load"] + \
                (EXACT_AVERAGE_STEPS + 3) * eager[method]
            share = left() * 0.55 / (len(METHODS) - i) - startup
            iterations = plan_iterations(share, per_iteration[method], sizes)
            results[method] = train(report, work, method, iterations, sizes, device,
                                    args.data_root)
            bring_back(args.out, work, method)
            report.keep("results", results)
        for i, method in enumerate(METHODS):
            if "iterations" not in results[method]:
                continue
            per_image = fid_probe(work, method, sizes, device)
            fixed = costs["child_start"] + costs["data_load"] + costs["inception_build"] + \
                2 * costs["frechet"]
            n = plan_images(left(), fixed, per_image, len(METHODS) - i, sizes)
            if n == 0:
                report.say(f"{method}: not scored: {left():.0f} s left, too few for "
                           f"{sizes['min_images']} images ({fixed:.0f} s of fixed costs)")
                continue
            report.say(f"{method}: about {1e3 * per_image:.3f} ms per image and set pair; "
                       f"scoring {n} images")
            r = score(report, work, method, n, sizes, device, args.data_root)
            results[method].update(r, fid_seconds=r.pop("seconds"))
            report.keep("results", results)
    summary(report, results)
    report.say(f"total {time.perf_counter() - start:.0f} s of a {args.budget_s:.0f} s budget")
    return 0


if __name__ == "__main__":
    from symvae.entry import guarded
    raise SystemExit(guarded(main, "gpu_check"))
