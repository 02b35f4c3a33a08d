"""When does symmetric learning start to use its code? Short mnist-ladder runs over a grid.

    python scripts/onset_sweep.py run --out DIR [--points 3e-4:64 1e-3:64 3e-3:64]
        [--seeds 1 2 3] [--cap 3000] [--log_period 50] [--jobs 2] [--nice 15] [--stop_at 18:25]
        [--bf16]
    python scripts/onset_sweep.py table LOG... [--theirs LOG...] [--theirs_setting 1e-4:64]

`run` trains our main_sym.py (batch size and Adam step size from each point, the authors'
network sizes nz0 30, nz1 100), one thread per run and at most --jobs runs at a time, each
under `nice` in its own copy of the experiment folder DIR/TAG (TAG `lr{step}-bs{batch}-s{seed}`).
Seeds vary fastest-last: every point's first seed runs before any point's second, so a cut
short sweep still covers the grid. A run stops at its --cap updates, or by SIGTERM (its log
then says `# stopped by SIGTERM`, with a checkpoint) once its onset is confirmed, or at
--stop_at (UTC, HH:MM). Finished or stopped runs are not run again when the sweep restarts.
With --bf16 the runs train under the opt-in bf16 autocast (tags end in `-bf16`).

`table` reads the logs (ours, and the authors' with --theirs, whose counts are one less) and
prints one row per run. Onset: the first logged update U from which qmi1 > 0.1 on every
later log line, provided those lines reach U + HOLD (1000 updates): a rise of qmi1 that falls
back within a thousand updates (as at step size 1e-3 for seed 0, where qmi1 peaked at 0.34 by
update 200 and was 0.04 by 700) is a transient, not an onset. z0 in use: the same rule with
qloss0 < log 2 - 0.01 (qloss0 is log 2 per bit while q's top layer ignores its input).
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from compare_dynamics import read_log  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
HOLD = 1000  # updates a crossing must last to count as an onset
QMI1_ONSET = 0.1
QLOSS0_MARGIN = 0.01
Rows = dict[int, dict[str, float]]


@dataclass(frozen=True)
class Point:
    stepsize: str  # as written on the command line, e.g. "1e-3"
    bs: int

    @property
    def name(self) -> str:
        return f"lr{self.stepsize}-bs{self.bs}"


def parse_point(text: str) -> Point:
    try:
        step, bs = text.split(":")
        float(step)
        return Point(step, int(bs))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want STEPSIZE:BATCH, e.g. 1e-3:64") from None


# --- onset from a log ---------------------------------------------------------------------
def sustained(rows: Rows, above: callable, hold: int = HOLD) -> int | None:
    """First logged update from which `above(values)` holds on every later line, when the
    lines from it reach `hold` updates further; None if there is none (yet)."""
    counts = sorted(rows)
    start = None
    for c in counts:
        if above(rows[c]):
            start = c if start is None else start
        else:
            start = None
    if start is None or counts[-1] - start < hold:
        return None
    return start


def qmi1_on(values: dict[str, float]) -> bool:
    return values.get("qmi1", 0.0) > QMI1_ONSET


def z0_on(values: dict[str, float]) -> bool:
    return values.get("qloss0", math.log(2)) < math.log(2) - QLOSS0_MARGIN


def header_setting(path: Path) -> tuple[str, str, str]:
    """(step size, batch, seed) from our log's first '#' line, '?' where absent."""
    text = path.read_text(errors="replace")
    first = next((ln for ln in text.splitlines() if ln.startswith("# sym ")), "")
    found = [re.search(rf"--{flag} (\S+)", first) for flag in ("stepsize", "bs", "seed")]
    step, bs, seed = (m.group(1) if m else "?" for m in found)
    return step_text(step), bs, seed


def step_text(step: str) -> str:
    """A step size as the table writes it: 0.0001 and 1e-4 both as 1e-4."""
    try:
        mantissa, exponent = f"{float(step):.0e}".split("e")
    except ValueError:
        return step
    return f"{mantissa}e{int(exponent)}"


def end_note(path: Path) -> str:
    """How the run ended, from its last '#' line."""
    marks = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("# ")]
    last = marks[-1] if marks else ""
    if "stopped by" in last:
        return "stopped"
    if "finished" in last.lower():
        return "finished"
    return "running" if not last.startswith("# stopped") else "failed"


def onset_text(rows: Rows, onset: int | None, above: callable) -> str:
    """The onset, or `none by LAST`, or `above since U, unconfirmed` when the criterion holds
    from U to the end of a log too short to confirm it."""
    if onset is not None:
        return str(onset)
    since = sustained(rows, above, hold=0)
    if since is not None:
        return f"above since {since}, unconfirmed at {max(rows)}"
    return f"none by {max(rows)}"


def run_row(rows: Rows) -> dict[str, str]:
    """The table's figures for one run."""
    if not rows:
        return {"last": "0"}
    last = max(rows)
    onset = sustained(rows, qmi1_on)
    z0 = sustained(rows, z0_on)
    peak = max(rows, key=lambda c: rows[c].get("qmi1", 0.0))
    g = lambda c, n: rows[c].get(n, float("nan"))
    return {
        "onset": onset_text(rows, onset, qmi1_on),
        "z0": onset_text(rows, z0, z0_on),
        "peak qmi1 (at)": f"{g(peak, 'qmi1'):.3f} ({peak})",
        "final qmi1": f"{g(last, 'qmi1'):.3f}",
        "max qmi0": f"{max(r.get('qmi0', 0.0) for r in rows.values()):.2g}",
        "final qmi0": f"{g(last, 'qmi0'):.2g}",
        "min qloss0": f"{min(r.get('qloss0', math.inf) for r in rows.values()):.4f}",
        "final qloss0": f"{g(last, 'qloss0'):.4f}",
        "final ploss1": f"{g(last, 'ploss1'):.3f}",
        "last": str(last),
    }


def bit_figures(log: Path) -> dict[str, str]:
    """From the per-bit MI files the run wrote beside its log at its last save (statq1-TAG,
    statq0-TAG: q's mutual information of each bit with x, nats): how many z1 bits carry
    more than 0.1 nats, and the sums over the bits of z1 and of z0."""
    tag = log.stem.removeprefix("log-")
    out = {}
    for group, name in (("q1", "z1"), ("q0", "z0")):
        path = log.parent / f"stat{group}-{tag}.txt"
        if not path.is_file():
            continue
        bits = [float(v) for v in path.read_text().split()]
        out[f"sum MI {name}"] = f"{sum(bits):.2f}"
        if group == "q1":
            out["z1 bits > 0.1"] = str(sum(b > QMI1_ONSET for b in bits))
    return out


def table(args: argparse.Namespace) -> int:
    entries = []
    for path in args.logs:
        step, bs, seed = header_setting(path)
        code = "ours, bf16" if " --bf16" in path.read_text(errors="replace").split("\n")[0] \
            else "ours"
        entries.append((f"{step}:{bs}", seed, code, path, read_log(path, authors=False)))
    for path in args.theirs:
        seed = re.search(r"s(\d+)", path.stem)
        entries.append((args.theirs_setting, seed.group(1) if seed else "?", "authors", path,
                        read_log(path, authors=True)))
    entries.sort(key=lambda e: (float(e[0].split(":")[1]), float(e[0].split(":")[0]),
                                e[2], e[1]))
    cols = ["step:batch", "seed", "code", "end", "onset", "z0", "peak qmi1 (at)", "final qmi1",
            "max qmi0", "final qmi0", "min qloss0", "final qloss0", "final ploss1",
            "z1 bits > 0.1", "sum MI z1", "sum MI z0"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for setting, seed, code, path, rows in entries:
        end = end_note(path)
        row = run_row(rows) | (bit_figures(path) if end != "running" else {})  # saved at 0
        row.update({"step:batch": setting, "seed": seed, "code": code, "end": end})
        print("| " + " | ".join(row.get(c, "–") for c in cols) + " |")
    print(f"\nonset: first logged update from which qmi1 > {QMI1_ONSET} on every later line, "
          f"for at least {HOLD} updates; z0: the same with qloss0 < log 2 - {QLOSS0_MARGIN}; "
          "unconfirmed: the criterion holds to the end of a log too short to confirm it; "
          "the last three columns (nats) from the per-bit MI files at the run's last save")
    return 0


# --- the sweep ------------------------------------------------------------------------------
def tag(point: Point, seed: int, bf16: bool = False) -> str:
    return f"{point.name}-s{seed}" + ("-bf16" if bf16 else "")


def prepare(out: Path, name: str) -> Path:
    """A copy of the experiment folder's scripts for one run, so runs never share files."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for script in (REPO / "mnist-ladder").glob("*.py"):
        shutil.copy2(script, folder / script.name)
    return folder


def done(folder: Path, name: str) -> bool:
    log = folder / "logs" / f"log-{name}.txt"
    return log.exists() and end_note(log) in ("finished", "stopped", "failed")


def command(point: Point, seed: int, args: argparse.Namespace) -> list[str]:
    return ["nice", "-n", str(args.nice), sys.executable, "main_sym.py",
            "--call_prefix", tag(point, seed, args.bf16), "--seed", str(seed), "--device", "cpu",
            "--nz0", "30", "--nz1", "100", "--stepsize", point.stepsize, "--bs", str(point.bs),
            "--niterations", str(args.cap), "--log_period", str(args.log_period),
            "--save_period", str(args.cap), "--no_progress", "--overwrite"] + \
        ["--bf16"] * args.bf16


class Adopted:
    """A run started elsewhere (by an earlier sweep), watched and stopped like our own."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        try:  # a zombie (state Z) has ended too: its new parent may never reap it
            alive = Path(f"/proc/{self.pid}/stat").read_text().split(") ")[1][0] != "Z"
        except (OSError, IndexError):
            alive = False
        if alive:
            return None
        self.returncode = -1  # not our child: its exit status is not ours to read
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def parse_adopted(text: str) -> tuple[str, int, int | None]:
    try:
        name, pid, *cap = text.split(":")
        return name, int(pid), int(cap[0]) if cap else None
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: want TAG:PID or TAG:PID:CAP") from None


def should_stop(log: Path, cap: int) -> bool:
    """Stop a run once its onset is confirmed or its log reaches `cap` updates."""
    if not log.exists():
        return False
    rows = read_log(log, authors=False)
    return bool(rows) and (max(rows) >= cap or sustained(rows, qmi1_on) is not None)


def deadline(text: str | None) -> float:
    if not text:
        return math.inf
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = map(int, text.split(":"))
    at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return at.timestamp() if at > now else math.inf


def sweep(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    queue = [(p, s) for s in args.seeds for p in args.points]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    stop_time = deadline(args.stop_at)
    running: dict[str, tuple[subprocess.Popen | Adopted, Path]] = {
        name: (Adopted(pid), out / name / "logs" / f"log-{name}.txt")
        for name, pid, _ in args.adopt}
    caps = {name: cap for name, _, cap in args.adopt if cap is not None}
    adopted = set(running)
    queue = [(p, s) for p, s in queue if tag(p, s, args.bf16) not in adopted]
    print(f"{len(queue)} runs, {args.jobs} at a time, cap {args.cap} updates", flush=True)
    while queue or running:
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                print(f"{time.strftime('%H:%M:%S')} {name} ended ({proc.returncode})", flush=True)
                del running[name]
            elif time.time() > stop_time or should_stop(log, caps.get(name, args.cap)):
                proc.send_signal(signal.SIGTERM)  # the run saves and logs where it stopped
        if time.time() > stop_time:
            queue.clear()
        while queue and len(running) < args.jobs:
            point, seed = queue.pop(0)
            name = tag(point, seed, args.bf16)
            folder = prepare(out, name)
            if done(folder, name):
                continue
            with open(folder / "stdout.txt", "w") as sink:
                proc = subprocess.Popen(command(point, seed, args), cwd=folder, env=env,
                                        stdout=sink, stderr=subprocess.STDOUT)
            running[name] = (proc, folder / "logs" / f"log-{name}.txt")
            print(f"{time.strftime('%H:%M:%S')} {name} started (pid {proc.pid})", flush=True)
        time.sleep(args.poll)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run the sweep")
    r.add_argument("--out", type=Path, required=True, help="folder for the runs (outside the repo)")
    r.add_argument("--points", type=parse_point, nargs="+",
                   default=[parse_point(p) for p in ("3e-4:64", "1e-3:64", "3e-3:64")])
    r.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    r.add_argument("--cap", type=int, default=3000, help="updates at most per run")
    r.add_argument("--log_period", type=int, default=50)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--nice", type=int, default=15)
    r.add_argument("--poll", type=float, default=20.0, help="seconds between looks at the logs")
    r.add_argument("--stop_at", default=None, help="UTC HH:MM: stop every run then")
    r.add_argument("--bf16", action="store_true", help="train under the bf16 autocast opt-in")
    r.add_argument("--adopt", type=parse_adopted, nargs="*", default=[],
                   metavar="TAG:PID[:CAP]",
                   help="runs of an earlier sweep still going: watched, stopped at their CAP "
                        "(default --cap), and counted against --jobs")
    t = sub.add_parser("table", help="the onset table from logs")
    t.add_argument("logs", type=Path, nargs="*", help="our logs (settings from their header)")
    t.add_argument("--theirs", type=Path, nargs="*", default=[], help="the authors' logs")
    t.add_argument("--theirs_setting", default="1e-4:64", help="STEPSIZE:BATCH of --theirs")
    args = parser.parse_args(argv)
    return sweep(args) if args.what == "run" else table(args)


if __name__ == "__main__":
    raise SystemExit(main())
