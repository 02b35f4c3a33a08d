"""Reproduce the authors' FID tables in one command: experiments x methods x seeds.

    python -m symvae reproduce --preset readme                 # the authors' tables, rows in turn
    python -m symvae reproduce --preset quick --dry-run        # what it would run, and how long
    python -m symvae reproduce --preset paper --executor slurm --partition gpu --timeout_min 720

Each row (symvae.reproduce.stages) trains, draws sample grids and scores both FIDs in
results/PRESET/ROW/; finished stages are skipped, so the same command run again finishes what
is missing and redoes nothing. The table is written to results/PRESET/table.{md,json,png}
(symvae.reproduce.report). Executors: `local` runs the rows in turn in this process;
`submitit-local` and `slurm` hand them to submitit (symvae.reproduce.cluster) as a job array.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from symvae.cli import check_flags, check_folder, device_named, fail, new_parser
from symvae.entry import details_beside, entry_point, parse_args
from symvae.experiment import EXPERIMENTS
from symvae.ground import REPO_ROOT
from symvae.reproduce.grid import (
    FID_DIMS,
    METHODS,
    PRESETS,
    SIZE_NAMES,
    Row,
    Sizes,
    build_rows,
    estimate_seconds,
)
from symvae.reproduce.report import duration, write_table
from symvae.reproduce.stages import (
    STAGES,
    Interrupted,
    Options,
    RowStateError,
    StageFailed,
    command_line,
    is_done,
    read_state,
    row_folder,
    run_row,
    stages_to_run,
)

EXECUTORS = ("local", "submitit-local", "slurm")
DEFAULT_PRESET = "readme"
# Without --preset, a run its own estimate puts beyond this many hours on the device at hand
# (the default preset on a CPU: weeks) is refused until a preset is named or --yes is given.
ASK_HOURS = 4
TABLE_FILES = ("table.md", "table.json", "table.png")  # symvae.reproduce.report.write_table
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class Stopped(Exception):
    """SIGTERM outside training (training handles it itself: checkpoint, then stop)."""


def parser() -> argparse.ArgumentParser:
    p = new_parser(
        prog="python -m symvae reproduce",
        description="Run the authors' FID table rows (train, sample grids, both FIDs) and write "
                    "results/PRESET/table.{md,json,png}. Run again to finish what is missing.")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help=f"default {DEFAULT_PRESET}, unless its estimated time here exceeds "
                        f"{ASK_HOURS} h (then name one, or pass --yes). "
                        + "; ".join(f"{n}: {pr.about}" for n, pr in PRESETS.items()))
    p.add_argument("--yes", action="store_true",
                   help=f"run the default preset ({DEFAULT_PRESET}) however long it takes here")
    p.add_argument("--experiments", nargs="+", choices=[*EXPERIMENTS, "all"], default=None,
                   help="default: the preset's (all three, or mnist-ladder for quick and gpu)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="one row per seed; the table gives mean ± sd over them")
    sizes = p.add_argument_group("sizes (override the preset's, for every row)")
    for f in Sizes.__dataclass_fields__.values():
        sizes.add_argument(f"--{f.name}", type=float if f.type == "float" else int, default=None)
    p.add_argument("--data_root", default=None, help="as for main_sym.py")
    p.add_argument("--device", default="auto", help="as for main_sym.py (auto: CUDA if any)")
    p.add_argument("--out", default=str(REPO_ROOT / "results"),
                   help="rows and tables go to OUT/PRESET (default results/ in the repository)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print each row's commands and the estimated time, run nothing")
    p.add_argument("--table_only", action="store_true",
                   help="write the table from what has finished, run nothing")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    ex = p.add_argument_group("executors")
    ex.add_argument("--executor", choices=EXECUTORS, default="local",
                    help="local: rows in turn here; submitit-local: submitit subprocesses; "
                         "slurm: one SLURM array task (one GPU) per row")
    ex.add_argument("--partition", default=None, help="SLURM partition")
    ex.add_argument("--timeout_min", type=int, default=None,
                    help="minutes per job before submitit requeues it from its checkpoint "
                         "(default 1440 on SLURM, 60 locally)")
    ex.add_argument("--gpus_per_node", type=int, default=None,
                    help="GPUs per job (default 1 on SLURM, 0 locally)")
    ex.add_argument("--cpus_per_task", type=int, default=None, help="SLURM CPUs per job")
    ex.add_argument("--array_parallelism", type=int, default=None,
                    help="SLURM: at most this many rows at once")
    ex.add_argument("--wait", action="store_true",
                    help="slurm: wait for the jobs, then write the table (else: submit and "
                         "return; run the same command again later for the table)")
    ex.add_argument("--resubmit", action="store_true",
                    help="slurm: submit unfinished rows even if their last job has not ended")
    return p


def check_args(args: argparse.Namespace) -> dict:
    """Validate the flags; returns the size overrides."""
    overrides = {k: getattr(args, k) for k in SIZE_NAMES if getattr(args, k) is not None}
    # the checks of the commands the stages run, before any row is built; on SLURM (and for
    # a dry run) the rows run elsewhere, so only the device's name is checked here
    elsewhere = args.executor == "slurm" or args.dry_run
    check_flags(args, skip=("device",) if elsewhere else ())
    device_named(args.device)
    if args.n is not None and args.n < 2:
        fail(f"--n {args.n}: FID needs at least 2 images per set (the authors use 70000)")
    if args.fid_dims is not None and args.fid_dims not in FID_DIMS:
        fail(f"--fid_dims {args.fid_dims}: must be one of {', '.join(map(str, FID_DIMS))} "
             "(pytorch-fid's feature blocks; the authors' FIDs use 2048)")
    cluster_flags = ("partition", "cpus_per_task", "array_parallelism")
    for flag in cluster_flags + ("wait", "resubmit"):
        if getattr(args, flag) and args.executor != "slurm":
            fail(f"--{flag} is for --executor slurm (this run uses --executor {args.executor})")
    for flag in ("timeout_min", "gpus_per_node", "array_parallelism", "cpus_per_task"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "gpus_per_node" else 1):
            fail(f"--{flag} {value}: must be a positive number")
    return overrides


def check_files(args: argparse.Namespace, rows: list[Row], opts: Options) -> None:
    """Refuse, before any work, an --out that cannot be written and results or state files
    that could not be used or written: row.json, fid_results.{json,md}, the table, jobs.json."""
    from symvae.evaluate.fid import results_problem
    check_folder(opts.out, "--out")
    for name in TABLE_FILES:
        if (opts.out / name).is_dir():
            fail(f"{opts.out / name} is a folder, but the table is written there; move it away")
    for row in rows:
        folder = row_folder(opts, row)
        if folder.exists() and not folder.is_dir():
            fail(f"{folder} is a file, but the row's folder goes there; move it away")
        try:
            read_state(folder, row)
        except RowStateError as err:
            fail(str(err))
        problem = results_problem(folder) if folder.is_dir() else None
        if problem:
            fail(problem)
    if args.executor != "local":
        from symvae.reproduce import cluster
        try:
            cluster.read_jobs(opts.out / "submitit")
        except cluster.JobsFileError as err:
            fail(str(err))


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def on_gpu(args: argparse.Namespace) -> bool:
    """Whether the rows will run on a GPU: the estimate's rates."""
    if args.executor == "slurm" or args.device.startswith("cuda"):
        return True
    import torch
    return args.device == "auto" and torch.cuda.is_available()


def pending_seconds(rows: list[Row], opts: Options, gpu: bool, parallel: bool) -> float:
    """The estimated time of the stages not yet done: their sum, or the longest row's if the
    rows run side by side (one SLURM job each)."""
    estimate = estimate_seconds(rows, gpu)
    per_row = []
    for row in rows:
        try:
            done = read_state(row_folder(opts, row), row)["stages"]
        except RowStateError:
            done = {}
        per_row.append(sum(estimate[row.name][s] for s in stages_to_run(done, row, opts)))
    return max(per_row, default=0.0) if parallel else sum(per_row)


def check_default_preset(args: argparse.Namespace, opts: Options, make_rows) -> None:
    """No --preset and no --yes: refuse a default run estimated beyond ASK_HOURS here, naming
    the presets that fit. `make_rows(preset)` gives a preset's rows for the flags given."""
    gpu, parallel = on_gpu(args), args.executor == "slurm"

    def seconds(name: str) -> float:
        return pending_seconds(make_rows(name), replace(opts, out=opts.out.parent / name), gpu,
                               parallel)
    total = seconds(DEFAULT_PRESET)
    if total <= ASK_HOURS * 3600:
        return
    fit = [f"{name} ~{duration(t)}" for name in PRESETS
           if name != DEFAULT_PRESET and (t := seconds(name)) <= ASK_HOURS * 3600]
    where = "by the GPU rates measured on an H200" if gpu else "on this CPU"
    fits = (f"within {ASK_HOURS} h here: {', '.join(fit)}" if fit else
            f"none fits in {ASK_HOURS} h here; --dry-run shows each preset's estimate")
    fail(f"no --preset given: the default, {DEFAULT_PRESET} (the authors' settings), is "
         f"estimated at {duration(total)} {where}; name one with --preset ({fits}), or pass "
         f"--yes to run {DEFAULT_PRESET} anyway")


def dry_run(rows: list[Row], opts: Options, gpu: bool) -> None:
    """Print each row's folder and commands, and the estimated time of what is not done."""
    estimate = estimate_seconds(rows, gpu)
    basis = ("GPU rates measured on one H200 (docs/bench-gpu.md, symvae/reproduce/grid.py)"
             if gpu else
             "rates measured on a quiet 2-core CPU (docs/benchmarks.md and docs/evaluate.md)")
    print(f"results: {opts.out}\nestimated from {basis}")
    total = dict.fromkeys(STAGES, 0.0)
    for row in rows:
        folder = row_folder(opts, row)
        try:
            done = read_state(folder, row)["stages"]
        except RowStateError:
            done = {}
        print(f"\n{row.name}: in {folder} (links {row.experiment}/*.py)")
        todo = stages_to_run(done, row, opts)
        for stage in STAGES:
            skip = stage not in todo
            seconds = 0.0 if skip else estimate[row.name][stage]
            total[stage] += seconds
            note = "done, skipped" if skip else f"~{duration(seconds)}"
            print(f"  {stage:<9}{command_line(row, stage, opts)}   [{note}]")
    parts = ", ".join(f"{s} {duration(v)}" for s, v in total.items())
    print(f"\nestimated total: {duration(sum(total.values()))} ({parts})")


def stopped(why: str, code: int) -> int:
    print(f"\n{why}. Run the same command again to finish; finished stages are kept.",
          file=sys.stderr)
    return code


def run_local(rows: list[Row], opts: Options, finish) -> int:
    """Rows in turn in this process; the table is rewritten after each row."""
    def on_term(signum, frame):
        raise Stopped
    previous = signal.signal(signal.SIGTERM, on_term)
    current = rows[0]
    try:
        for current in rows:
            run_row(current, opts)
            finish(quiet=True)
    except StageFailed as err:
        finish(quiet=True)
        if err.code in SIGNAL_EXIT.values():  # the stage itself was stopped by a signal
            return stopped(str(err), err.code)
        fail(f"{err}; fix what its message says and run the same command again (finished "
             "stages are kept)", code=1)
    except (Interrupted, KeyboardInterrupt, Stopped) as err:
        finish(quiet=True)
        return stopped(str(err) or f"stopped during {current.name}",
                       SIGNAL_EXIT["SIGTERM" if isinstance(err, Stopped) else "SIGINT"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    finish()
    return 0


def _raise_stopped(signum, frame) -> None:
    raise Stopped


def stop_local_jobs(jobs: list, grace: float = 60.0) -> None:
    """End submitit-local jobs with the runner: SIGTERM to each job's controller, which passes
    it on to its task (training saves a checkpoint and stops); after `grace` seconds, the
    controller is cancelled (it interrupts, then kills its task)."""
    import time
    running = [j for j in jobs if getattr(j, "_process", None) is not None
               and j._process.poll() is None]
    for job in running:
        job._process.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for job in running:
        try:
            job._process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            job.cancel()
            job._process.wait()


def run_submitit(args: argparse.Namespace, rows: list[Row], opts: Options, finish) -> int:
    """Rows as a submitit job array; waits for them unless on SLURM without --wait."""
    from submitit.core.utils import UncompletedJobError

    from symvae.reproduce import cluster
    slurm = args.executor == "slurm"
    folder = opts.out / "submitit"
    opts = replace(opts, progress=False)  # job logs are files, not terminals
    todo = [r for r in rows if not is_done(r, opts)]
    if slurm and not args.resubmit:
        jobs = cluster.read_jobs(folder)
        busy = [r for r in todo if r.name in jobs and cluster.in_flight(folder, jobs[r.name])]
        for r in busy:
            print(f"{r.name}: job {jobs[r.name]} has not ended; not resubmitted "
                  "(--resubmit to force)")
        todo = [r for r in todo if r not in busy]
    if not todo:
        finish()
        return 0
    try:
        executor = cluster.make_executor(
            args.executor, folder, name=f"symvae-{args.preset}",
            timeout_min=args.timeout_min or (1440 if slurm else 60),
            gpus_per_node=args.gpus_per_node if args.gpus_per_node is not None else int(slurm),
            cpus_per_task=args.cpus_per_task, partition=args.partition,
            array_parallelism=args.array_parallelism)
    except FileNotFoundError as err:
        fail(f"--executor slurm: no `{err}` on this machine; submit from a SLURM login node, "
             "or use --executor local")
    jobs = cluster.submit(executor, todo, opts, folder)
    for r, j in zip(todo, jobs, strict=True):
        print(f"{r.name}: job {j.job_id} (logs in {folder})")
    if slurm and not args.wait:
        print("submitted; run the same command again when the jobs have ended to write the "
              "table (rows already finished are not resubmitted)")
        return 0
    failed = []
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_stopped)}
    try:
        for r, j in zip(todo, jobs, strict=True):
            try:
                j.result()
            except UncompletedJobError as err:
                failed.append(f"{r.name} (job {j.job_id}): {str(err).strip().splitlines()[-1]}")
    except (KeyboardInterrupt, Stopped) as err:
        name = "SIGTERM" if isinstance(err, Stopped) else "SIGINT"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if slurm:
            ids = " ".join(str(j.job_id) for j in jobs)
            print(f"\n{name}: stopped waiting; the SLURM jobs go on (stop them with `scancel "
                  f"{ids}`); run the same command again for the table", file=sys.stderr)
        else:
            stop_local_jobs(jobs)
            print(f"\n{name}: stopped, and the rows' jobs with it (their checkpoints are kept); "
                  "run the same command again to finish", file=sys.stderr)
        return SIGNAL_EXIT[name]
    finally:  # both, so that a caller in the same process (a test) gets Ctrl-C back
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    finish()
    if failed:
        fail("rows failed: " + "; ".join(failed) + f"; see the job logs in {folder} and run "
             "the same command again", code=1)
    return 0


@entry_point("reproduce")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), argv)
    overrides = check_args(args)
    experiments = None if not args.experiments else \
        tuple(EXPERIMENTS) if "all" in args.experiments else tuple(_unique(args.experiments))
    asked = args.preset is not None
    args.preset = args.preset or DEFAULT_PRESET

    def make_rows(preset: str) -> list[Row]:
        return build_rows(preset, experiments, tuple(_unique(args.methods)),
                          tuple(_unique(args.seeds)), overrides)
    rows = make_rows(args.preset)
    # absolute: each stage runs inside its row's folder
    data_root = str(Path(args.data_root).resolve()) if args.data_root else None
    opts = Options(out=Path(args.out).resolve() / args.preset, data_root=data_root,
                   device=args.device, progress=not args.no_progress)
    if not (asked or args.yes or args.dry_run or args.table_only):
        check_default_preset(args, opts, make_rows)
    details_beside(opts.out, "error-reproduce")  # an unforeseen failure's traceback
    preset = PRESETS[args.preset]
    print(f"preset {preset.name}: {preset.about}; {len(rows)} rows")
    if args.dry_run:
        dry_run(rows, opts, on_gpu(args))
        return 0
    check_files(args, rows, opts)
    command = "python -m symvae reproduce " + shlex.join(sys.argv[1:] if argv is None else argv)
    began = time.time()

    def finish(quiet: bool = False) -> None:
        try:
            paths = write_table(opts.out, args.preset, rows, opts, command)
        except OSError as err:
            fail(f"cannot write the table in {opts.out} ({err.strerror}); fix it and run "
                 "again with --table_only")
        if not quiet:
            print(f"table: {paths[0]} (and .json, .png); {duration(time.time() - began)}")
    try:
        if args.table_only:
            finish()
            return 0
        if args.executor == "local":
            return run_local(rows, opts, finish)
        return run_submitit(args, rows, opts, finish)
    except RowStateError as err:  # an unreadable row.json: the message names it and the fix
        fail(str(err))


if __name__ == "__main__":
    raise SystemExit(main())
