"""Threads and OpenMP wait policy of a CPU training iteration, side by side in one run.

    python scripts/thread_policy.py [--bs 64] [--iters 20] [--turns 3] [--busy 4]
        [--cases quiet busy]
        [--configs 1:default 2:default 2:PASSIVE 2:spin=10000 2:symvae]

Each configuration THREADS:POLICY runs in its own process (the wait policy is read when
OpenMP starts, so it cannot change within one), with torch.set_num_threads(THREADS) and
POLICY one of: `default` (nothing set, torch imported first: libgomp's spin-then-sleep),
`symvae` (nothing set, symvae imported first: its own choice), PASSIVE or ACTIVE
(OMP_WAIT_POLICY), or `spin=N` (GOMP_SPINCOUNT=N: spin N rounds, then sleep). It times
--iters mnist-ladder symmetric iterations (symvae.reproduce.bench's, on synthetic data) after
3 warm-up ones. In each of --turns turns every configuration runs twice: on the machine as it
is ("quiet"), then beside --busy processes that each keep a core busy ("busy"; load about
busy + threads), so that both cases meet the same machine in one run. Prints, per
configuration and case, the median over turns of wall and process CPU seconds per iteration
(CPU seconds count every thread's work and spinning: what the run costs the other users of
the machine), and the load average before and after. --cases picks one of the two cases.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

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
    env.pop("GOMP_SPINCOUNT", None)
    if policy.startswith("spin="):
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin=")
    elif policy not in ("default", "symvae"):
        env["OMP_WAIT_POLICY"] = policy
    flags = ["--package_first"] if policy == "symvae" else []
    out = subprocess.run([sys.executable, __file__, "--child", "--bs", str(args.bs), "--iters",
                          str(args.iters), "--threads", threads, *flags], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class Busy:
    """`n` processes that each spin on a core until the block ends."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self) -> Self:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(self.n)]
        time.sleep(1.0)  # let them reach the run queue
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--configs", nargs="+",
                   default=["1:default", "2:default", "2:PASSIVE", "2:symvae"])
    p.add_argument("--busy", type=int, default=4,
                   help="spinning processes beside each configuration's busy case")
    p.add_argument("--cases", nargs="+", choices=["quiet", "busy"], default=["quiet", "busy"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--package_first", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.bs, args.iters, args.threads, args.package_first)
        return 0
    load_before = os.getloadavg()
    cases = args.cases
    results: dict[tuple[str, str], list[dict]] = {(c, k): [] for c in args.configs
                                                   for k in cases}
    for _ in range(args.turns):
        for config in args.configs:
            if "quiet" in cases:
                results[config, "quiet"].append(run_config(config, args))
            if "busy" in cases:
                with Busy(args.busy):
                    results[config, "busy"].append(run_config(config, args))
    load_after = os.getloadavg()
    print(f"mnist-ladder symmetric, batch {args.bs}, {args.iters} iterations per turn, "
          f"{args.turns} turns, busy case beside {args.busy} spinning processes; load average "
          f"(1, 5, 15 min) before {', '.join(f'{x:.1f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.1f}' for x in load_after)}; {os.cpu_count()} CPUs\n")
    print("| threads | wait policy | case | wall s/it | CPU s/it | turns (wall) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (config, case), runs in results.items():
        threads, policy = config.split(":")
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        each = ", ".join(f"{r['wall']:.3f}" for r in runs)
        print(f"| {threads} | {policy} | {case} | {wall:.3f} | {cpu:.3f} | {each} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
