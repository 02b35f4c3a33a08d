"""Training speed of every experiment x method, as figures (docs/benchmarks.md).

    python -m symvae bench --all --bs 1024 --out docs/bench-cpu.json
    python -m symvae bench --experiments mnist-ladder --ref /path/to/authors --reps 3
    python -m symvae bench --gpu-check            # CUDA, all pairs, eager and captured
    python -m symvae bench --experiments mnist-ladder --bs 64 --bf16 both --ref DIR  # CPU
    python -m symvae bench --png                  # generate_data's PNG writer vs save_image

An iteration is exactly the training loop's (`Trainer.iteration`: batch draw,
noise, the learning step, running means and MI statistics) on synthetic data of
the experiment's kind (random images, preprocessed as the data set is), so no
data set is needed. Each configuration is warmed up, then timed iteration by
iteration; the table gives the median. Work is counted with torch's FLOP counter
on one iteration, and the machine's fp32 matmul peak is measured in the same
run, so the fraction of peak is comparable under whatever load the run met.

With `--ref DIR` (a checkout of the authors' repository) their unmodified
scripts are timed beside ours in the same run (symvae.authors.scripts), alternating
ours and theirs `--reps` times, and only these same-run ratios are reported.
With `--bf16` (CPU), our iteration is also (`both`) or only (`yes`) timed under
the training's opt-in bf16 autocast (`--bf16` of main_sym.py / main_elbo.py).
With `--capture`, the iteration is also timed replayed from a CUDA graph
(symvae.learn.capture); on accelerators iterations are timed in blocks of
BLOCK with one synchronisation per block, as a run issues them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from symvae.authors.scripts import AuthorsMissing, time_authors
from symvae.cli import fail, pick_device
from symvae.data.datasets import DeviceData
from symvae.entry import parse_args
from symvae.experiment import EXPERIMENTS, load_model_class
from symvae.ground import REPO_ROOT
from symvae.learn import runtime
from symvae.learn.stats import EXACT_AVERAGE_STEPS
from symvae.learn.train import Trainer

METHODS = ("sym", "elbo")
SYNTHETIC_IMAGES = 70000
BLOCK = 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Median fp32 GFLOP/s of an n x n matrix product (TF32 if the run enabled it)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(reps + 2):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times[2:]) / 1e9


def available_experiments() -> list[str]:
    """The experiment folders present in this checkout."""
    return [name for name in EXPERIMENTS if (REPO_ROOT / name / "hvae.py").is_file()]


def synthetic_data(model_cls, device: torch.device, n: int = SYNTHETIC_IMAGES) -> DeviceData:
    """Random uint8 images preprocessed as the experiment's data set (binarised or grey)."""
    raw = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    images, scale = model_cls.dataset.preprocess(raw)
    return DeviceData(images.to(device), scale)


def build_trainer(experiment: str, method: str, bs: int, device: torch.device,
                  seed: int = 0, nz: tuple[int, int] = (30, 100), bf16: bool = False) -> Trainer:
    """The training loop's Trainer for one experiment x method, on synthetic data."""
    torch.manual_seed(seed)
    model_cls = load_model_class(experiment)
    model = model_cls(*nz).to(device)
    args = SimpleNamespace(stepsize=1e-4, nan_policy="stop", bs=bs, bf16=bf16)
    return Trainer(model, method, synthetic_data(model_cls, device), None, args, device)


def iteration_gflop(trainer: Trainer) -> float:
    """GFLOP of one training iteration (matrix products and convolutions, forward+backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        trainer.iteration()
    return counter.get_total_flops() / 1e9


def time_iterations(trainer: Trainer, iters: int, warmup: int,
                    block: int = 1) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) per iteration, `iters` after `warmup` ones.

    Timed `block` iterations at a time, the device synchronised around each block.
    CPU seconds are the robust figure on a shared machine when torch runs one thread:
    they count the work done, not the waiting for a core.
    """
    for _ in range(warmup):
        trainer.iteration()
        trainer.count += 1
    wall, cpu = [], []
    for _ in range(max(iters // block, 1)):
        sync(trainer.device)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(block):
            trainer.iteration()
            trainer.count += 1
        sync(trainer.device)
        wall.append((time.perf_counter() - t) / block)
        cpu.append((time.process_time() - c) / block)
    return wall, cpu


def bench_pair(experiment: str, method: str, bs: int, device: torch.device, iters: int,
               warmup: int, compiled: bool, captured: bool = False, bf16: bool = False) -> dict:
    """Timings of our iteration for one experiment x method (eager, compiled or captured;
    fp32, or the learning step under bf16 autocast)."""
    trainer = build_trainer(experiment, method, bs, device, bf16=bf16)
    gflop = iteration_gflop(trainer)  # counted in eager mode; compiling keeps the arithmetic
    started = time.perf_counter()
    if compiled:
        runtime.compile_model(trainer.model)
    if captured:
        # the statistics' values and the data's order do not matter here: skip to where the
        # weight is fixed and the order permuted, so that capture and its check (the next two
        # iterations after one eager one) happen before the timing
        trainer.learner.guard = False
        trainer.means.count = max(trainer.means.count, EXACT_AVERAGE_STEPS)
        trainer.data.perm = torch.randperm(len(trainer.data), device=device)
        trainer.capture_at = trainer.count + 1  # after one eager iteration made the statistics
        warmup = max(warmup, 3)
    block = 1 if device.type == "cpu" else BLOCK
    times, cpu = time_iterations(trainer, iters, warmup, block)
    median = statistics.median(times)
    replayed = trainer.captured is not None and trainer.captured.checked is not None
    return {"experiment": experiment, "method": method, "bs": bs, "device": str(device),
            "compile": compiled, "capture": captured, "bf16": bf16, "replayed": replayed,
            "replays_timed": len(times) * block if replayed else 0,
            "capture_notes": trainer.notes, "seconds": median,
            "it_per_s": 1 / median, "min_seconds": min(times), "times": times, "cpu_times": cpu,
            "cpu_seconds": statistics.median(cpu), "gflop": gflop,
            "gflop_per_s": gflop / median,
            "setup_seconds": time.perf_counter() - started - sum(times) * block}


def with_authors(row: dict, authors: list[tuple[list[float], list[float]]],
                 ours: list[tuple[list[float], list[float]]]) -> dict:
    """Add the authors' timings of the same run: ratio = their median / ours, of wall and of
    process CPU seconds, over all repetitions and per repetition."""
    def median(reps, k):
        return statistics.median([t for rep in reps for t in rep[k]])
    row.update(authors_seconds=median(authors, 0), authors_cpu_seconds=median(authors, 1),
               authors_times=authors, ours_times=ours,
               ratio=median(authors, 0) / median(ours, 0),
               cpu_ratio=median(authors, 1) / median(ours, 1),
               ratios=[median([a], 0) / median([o], 0)
                       for a, o in zip(authors, ours, strict=True)])
    return row


def markdown(rows: list[dict], peak: float) -> str:
    """The results as a markdown table (with the authors' same-run figures where timed)."""
    authors = any("authors_seconds" in r for r in rows)
    head = ["experiment", "method", "mode", "s/it (median)", "it/s", "CPU s/it", "GFLOP/it",
            "GFLOP/s", "% of peak"]
    if authors:
        head += ["authors s/it", "authors CPU s/it", "authors / ours (same run)",
                 "per repetition", "CPU s ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["experiment"], r["method"], mode_name(r),
                 f"{r['seconds']:.4g}", f"{r['it_per_s']:.3g}", f"{r['cpu_seconds']:.4g}",
                 f"{r['gflop']:.1f}",
                 f"{r['gflop_per_s']:.1f}", f"{100 * r['gflop_per_s'] / peak:.0f}%"]
        if authors:
            ok = "authors_seconds" in r
            cells += [f"{r['authors_seconds']:.4g}" if ok else "",
                      f"{r['authors_cpu_seconds']:.4g}" if ok else "",
                      f"{r['ratio']:.2f}x" if ok else "",
                      ", ".join(f"{x:.2f}" for x in r["ratios"]) if ok else "",
                      f"{r['cpu_ratio']:.2f}x" if ok else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mode_name(row: dict) -> str:
    mode = "captured" if row.get("capture") else "compiled" if row["compile"] else "eager"
    return mode + (", bf16" if row.get("bf16") else "")


def conditions(device: torch.device, applied: dict) -> dict:
    """What the figures were measured on and under."""
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "device": str(device), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "settings": applied}
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- generate_data's PNG writing ---------------------------------------------------------
def _grey(path: Path) -> bytes:
    """Decoded grey pixels (save_image writes RGB, the pool 8-bit grey: same values)."""
    from PIL import Image
    with Image.open(path) as img:
        return img.convert("L").tobytes()


def bench_png(n: int, workers: int) -> dict:
    """Images/s of export.PngWriter vs one torchvision save_image call per image, same images."""
    from torchvision.utils import save_image

    from symvae.evaluate.export import PngWriter
    images = (torch.rand(n, 1, 28, 28) > 0.5).float()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        single, pooled = Path(tmp, "single"), Path(tmp, "pooled")
        single.mkdir()
        pooled.mkdir()
        t = time.perf_counter()
        for i, img in enumerate(images):
            save_image(img, single / f"img_{i:05d}.png")
        out["save_image_per_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        writer = PngWriter(workers)
        writer.write(pooled, 0, images)
        writer.close()
        out["png_writer_per_s"] = n / (time.perf_counter() - t)
        same = all(_grey(single / f.name) == _grey(f) for f in sorted(pooled.iterdir())[:100])
    out.update(n=n, workers=workers, speedup=out["png_writer_per_s"] / out["save_image_per_s"],
               first_100_same_pixels=same)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Iterations per second of each experiment x method.")
    p.add_argument("--experiments", nargs="+", default=None,
                   help=f"experiment folders (default: those present of {', '.join(EXPERIMENTS)})")
    p.add_argument("--all", action="store_true", help="every present experiment, both methods")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--bs", type=int, default=1024, help="batch size (default 1024)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations per pair (default 5 on CPU, 30 on accelerators)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default 1 on CPU, 5 on accelerators)")
    p.add_argument("--compile", choices=["no", "yes", "both"], default="no",
                   help="torch.compile the networks: no, yes, or both side by side")
    p.add_argument("--capture", choices=["no", "yes", "both"], default="no",
                   help="replay the iteration as a CUDA graph: no, yes, or both beside eager")
    p.add_argument("--bf16", choices=["no", "yes", "both"], default="no",
                   help="CPU: the learning step under bf16 autocast (training's --bf16): no, "
                        "yes, or both beside fp32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: TF32 matrix products (default fp32, as training's default)")
    p.add_argument("--ref", default=None,
                   help="a checkout of the authors' repository: time their scripts too, "
                        "alternating with ours (needs the data under --data_root)")
    p.add_argument("--reps", type=int, default=1,
                   help="repetitions, alternating ours and the authors' (with --ref)")
    p.add_argument("--data_root", default=None, help="data for the authors' scripts (--ref)")
    p.add_argument("--gpu-check", action="store_true",
                   help="the GPU check: --all --bs 1024 --device cuda --capture both")
    p.add_argument("--png", action="store_true",
                   help="benchmark generate_data's PNG writing instead of training")
    p.add_argument("--png_images", type=int, default=5000, help="images for --png")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="PNG writer processes for --png")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    args = parse_args(p, argv)
    if args.gpu_check:
        args.all, args.bs, args.capture = True, 1024, "both"
        args.device = "cuda" if args.device == "auto" else args.device
    if args.bs < 1:
        fail(f"--bs {args.bs}: must be a positive batch size")
    if args.reps < 1:
        fail(f"--reps {args.reps}: must be a positive number of repetitions")
    for flag, low in (("iters", 1), ("warmup", 0), ("threads", 1), ("png_images", 1),
                      ("workers", 0)):
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            fail(f"--{flag} {getattr(args, flag)}: must be {low} or more")
    if args.ref is not None and not Path(args.ref, "mnist-ladder", "hvae.py").is_file():
        fail(f"--ref {args.ref}: not a checkout of the authors' repository (no "
             "mnist-ladder/hvae.py); clone github.com/dschles70/symvae-aistats2024")
    return args


def measure(args: argparse.Namespace, name: str, method: str, device: torch.device, iters: int,
            warmup: int, compiled: bool, captured: bool, bf16: bool = False) -> dict:
    """Ours (and with --ref the authors', alternating) for one experiment x method."""
    ours, theirs, row = [], [], {}
    for rep in range(args.reps):
        row = bench_pair(name, method, args.bs, device, iters, warmup, compiled, captured, bf16)
        ours.append((row["times"], row["cpu_times"]))
        line = (f"{name} {method} {mode_name(row)}: ours {row['seconds']:.4g} s/it "
                f"({row['cpu_seconds']:.4g} CPU s)")
        if args.ref and not compiled and not captured:
            try:
                theirs.append(time_authors(Path(args.ref), name, method, args.bs, str(device),
                                           iters, warmup, torch.get_num_threads(),
                                           args.data_root and Path(args.data_root)))
            except AuthorsMissing as err:
                fail(str(err))
            line += (f", authors {statistics.median(theirs[-1][0]):.4g} s/it "
                     f"({statistics.median(theirs[-1][1]):.4g} CPU s)")
        print(f"{line} (repetition {rep + 1}/{args.reps})", file=sys.stderr, flush=True)
    row["seconds"] = statistics.median([t for rep in ours for t in rep[0]])
    row["cpu_seconds"] = statistics.median([t for rep in ours for t in rep[1]])
    row["it_per_s"], row["gflop_per_s"] = 1 / row["seconds"], row["gflop"] / row["seconds"]
    return with_authors(row, theirs, ours) if theirs else row


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.png:
        result = bench_png(args.png_images, args.workers)
        print(json.dumps(result, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    device = pick_device(args.device)
    applied = runtime.configure(device, args.threads, tf32=args.tf32)
    accel = device.type != "cpu"
    iters = args.iters or (30 if accel else 5)
    warmup = args.warmup if args.warmup is not None else (5 if accel else 1)
    present = available_experiments()
    experiments = args.experiments or present
    for name in experiments:
        if name not in present and not Path(name, "hvae.py").is_file():
            fail(f"--experiments {name}: no {name}/hvae.py here; present: {', '.join(present)}")
    if args.bf16 != "no" and device.type != "cpu":
        fail(f"--bf16 {args.bf16}: bf16 autocast is offered for CPU training only, and the "
             f"device is {device}; use --device cpu or leave --bf16 out")
    choice = {"no": [False], "yes": [True], "both": [False, True]}
    modes = [(c, False, False) for c in choice[args.compile]]  # (compiled, captured, bf16)
    modes += [(False, True, False)] * (args.capture != "no")
    if args.capture == "yes":
        modes = [m for m in modes if m != (False, False, False)] or [(False, True, False)]
    if args.bf16 != "no":  # bf16 in eager mode, beside (both) or instead of (yes) fp32 eager
        eager = modes.index((False, False, False)) + 1 if (False, False, False) in modes else 0
        modes.insert(eager, (False, False, True))
        if args.bf16 == "yes":
            modes = [m for m in modes if m != (False, False, False)]
    info = conditions(device, applied)
    print(f"# {info}", file=sys.stderr)
    peak = matmul_peak(device)
    rows = []
    for compiled, captured, bf16 in modes:  # every eager figure first: compiling is slow
        for name in experiments:
            for method in args.methods:
                rows.append(measure(args, name, method, device, iters, warmup, compiled,
                                    captured, bf16))
    peak = max(peak, matmul_peak(device))  # measured before and after: the better of the two
    info["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    table = markdown(rows, peak)
    print(f"matmul peak {peak:.1f} GFLOP/s ({device}, {info['threads']} threads); "
          f"batch {args.bs}, median of {iters} after {warmup} warm-up, {args.reps} "
          f"repetition(s); load average {info.get('load_average_1min')} at the start, "
          f"{info['load_average_1min_end']} at the end")
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"conditions": info, "peak_gflop_per_s": peak,
                                              "iters": iters, "warmup": warmup,
                                              "reps": args.reps, "ref": args.ref,
                                              "results": rows}, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    from symvae.entry import guarded
    raise SystemExit(guarded(main, "bench"))
