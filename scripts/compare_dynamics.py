"""Compare training dynamics of several runs of two codes, from their log files.

    python scripts/compare_dynamics.py --ours logs/log-a.txt ... --theirs REF/logs/log-s1.txt ...
        [--at 1000 2000 3000 4000] [--names plossx ploss1] [--onset qmi1:0.1]

Both codes write `time: T count: C len: L name: value ...` lines every 100 updates; the
authors' count C is the 0-based index of the last update (99 after 100 updates), ours the
number of updates (100). Lines are aligned by the number of updates. Prints a markdown table:
mean and sample standard deviation over the runs of each figure at each update count, and
per run the first logged update count at which the onset figure exceeds its threshold. The
last column is ours minus the authors' mean with its standard error sqrt(s1²/n1 + s2²/n2):
a difference of a few standard errors is more than the seed-to-seed spread explains.

`--labels A B` names the two sets in the table (default ours, authors), and
`--theirs_counts ours` reads the second set's counts as ours, for two sets of our own runs
(e.g. the opt-in bf16 autocast against fp32).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def read_log(path: Path, authors: bool) -> dict[int, dict[str, float]]:
    """{updates: {name: value}} from the numbered lines of a log file."""
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("#") or "count:" not in line:
            continue
        words = line.split()
        fields = {words[i].rstrip(":"): words[i + 1] for i in range(0, len(words) - 1, 2)}
        try:
            values = {k: float(v) for k, v in fields.items()}
        except ValueError:
            continue  # a line cut short by a crash
        updates = int(values["count"]) + (1 if authors else 0)
        rows[updates] = values
    return rows


def onset(rows: dict[int, dict[str, float]], name: str, threshold: float) -> int | None:
    for updates in sorted(rows):
        if rows[updates].get(name, float("-inf")) > threshold:
            return updates
    return None


def summary(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def difference(ours: list[float], theirs: list[float]) -> str:
    """Difference of the means, with its standard error when both sides have two runs or more."""
    if not ours or not theirs:
        return "–"
    diff = statistics.mean(ours) - statistics.mean(theirs)
    if len(ours) < 2 or len(theirs) < 2:
        return f"{diff:+.4f}"
    se = (statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)) ** .5
    return f"{diff:+.4f} ± {se:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ours", type=Path, nargs="*", default=[])
    parser.add_argument("--theirs", type=Path, nargs="*", default=[])
    parser.add_argument("--at", type=int, nargs="+", default=[1000, 2000, 3000, 4000])
    parser.add_argument("--names", nargs="+", default=["plossx", "ploss1"])
    parser.add_argument("--onset", default="qmi1:0.1", help="NAME:THRESHOLD")
    parser.add_argument("--labels", nargs=2, default=["ours", "authors"], metavar=("A", "B"),
                        help="names of the --ours and --theirs sets in the table")
    parser.add_argument("--theirs_counts", choices=["authors", "ours"], default="authors",
                        help="whose count convention the --theirs logs follow")
    args = parser.parse_args(argv)
    if not args.ours and not args.theirs:
        parser.error("no logs: give --ours and/or --theirs log files")
    onset_name, threshold = args.onset.split(":")
    a, b = args.labels
    codes = {a: [read_log(p, False) for p in args.ours],
             b: [read_log(p, args.theirs_counts == "authors") for p in args.theirs]}

    print(f"| figure | updates | {a} (n={len(codes[a])}) | "
          f"{b} (n={len(codes[b])}) | {a} − {b} |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.names:
        for at in args.at:
            values = [[r[at][name] for r in runs if at in r and name in r[at]]
                      for runs in codes.values()]
            print(f"| {name} | {at} | {summary(values[0])} | {summary(values[1])} | "
                  f"{difference(*values)} |")
    for code, runs in codes.items():
        found = [onset(r, onset_name, float(threshold)) for r in runs]
        last = [max(r) if r else 0 for r in runs]
        text = ", ".join(str(f) if f is not None else f"not by {n}" for f, n in zip(found, last))
        text = text or "no runs"
        print(f"\nfirst update with {onset_name} > {threshold}, {code}: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
