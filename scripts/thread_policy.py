"""Threads and OpenMP wait policy of a CPU training iteration, side by side in one run.

    python scripts/thread_policy.py [--bs 64] [--iters 20] [--turns 3]
        [--configs 1:default 2:default 2:PASSIVE]

Each configuration THREADS:POLICY runs in its own process (the wait policy is read when
OpenMP starts, so it cannot change within one), with torch.set_num_threads(THREADS) and
OMP_WAIT_POLICY=POLICY (`default`: unset and torch imported first, libgomp's
spin-then-sleep; `symvae`: unset and symvae imported first, its own choice). It times --iters
mnist-ladder symmetric iterations (symvae.reproduce.bench's, on synthetic data) after 3 warm-up
ones; configurations alternate for --turns turns, so they meet the same load. Prints, per
configuration, the median over turns of wall and process CPU seconds per iteration (CPU
seconds count every thread's work and spinning: what the run costs the other users of
the machine), and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(bs: int, iters: int, threads: int, package_first: bool) -> None:
    if package_first:  # symvae's own choice of wait policy, made when it is imported
        import symvae  # noqa: F401
    import torch  # otherwise torch (and libgomp) start before symvae sets anything

    from symvae.reproduce.bench import build_trainer, time_iterations
    torch.set_num_threads(threads)
    trainer = build_trainer("mnist-ladder", "sym", bs, torch.device("cpu"))
    wall, cpu = time_iterations(trainer, iters, warmup=3)
    print(json.dumps({"wall": sum(wall) / len(wall), "cpu": sum(cpu) / len(cpu)}))


def run_config(config: str, args: argparse.Namespace) -> dict:
    threads, policy = config.split(":")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=threads)
    env.pop("OMP_WAIT_POLICY", None)
    if policy not in ("default", "symvae"):
        env["OMP_WAIT_POLICY"] = policy
    flags = ["--package_first"] if policy == "symvae" else []
    out = subprocess.run([sys.executable, __file__, "--child", "--bs", str(args.bs), "--iters",
                          str(args.iters), "--threads", threads, *flags], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--configs", nargs="+",
                   default=["1:default", "2:default", "2:PASSIVE", "2:symvae"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--package_first", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.bs, args.iters, args.threads, args.package_first)
        return 0
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    for _ in range(args.turns):
        for config in args.configs:
            results[config].append(run_config(config, args))
    load_after = os.getloadavg()
    print(f"mnist-ladder symmetric, batch {args.bs}, {args.iters} iterations per turn, "
          f"{args.turns} turns; load average (1, 5, 15 min) before "
          f"{', '.join(f'{x:.1f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.1f}' for x in load_after)}; {os.cpu_count()} CPUs\n")
    print("| threads | OMP_WAIT_POLICY | wall s/it | CPU s/it | turns (wall) |")
    print("| --- | --- | --- | --- | --- |")
    for config, runs in results.items():
        threads, policy = config.split(":")
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        each = ", ".join(f"{r['wall']:.3f}" for r in runs)
        print(f"| {threads} | {policy} | {wall:.3f} | {cpu:.3f} | {each} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
