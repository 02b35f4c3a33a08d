"""One row of the FID tables, stage by stage, each stage skipped when its result exists.

A row lives in its own folder results/PRESET/ROW/, which links its experiment's .py files and
so is an experiment folder like the original (generate.py, plotting and `python -m symvae fid`
work inside it). Stages, each the existing command's own library entry point run there:

  train     symvae.learn.train.main (main_sym.py / main_elbo.py); continues models/m_TAG.pt if any
  generate  symvae.evaluate.generate.main (generate.py): images/generated_{sh,sta}_TAG.png
  fid       symvae.evaluate.fid.main: random-code and limiting FID, appended to
            fid_results.{md,json}

ROW/row.json records each finished stage with the flags it ran with; a stage is redone only
when it has no record, its flags changed, or a stage before it was redone.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from symvae.ground import REPO_ROOT, atomic_write
from symvae.learn import checkpoint as ckpt_io
from symvae.reproduce.grid import Row

STAGES = ("train", "generate", "fid")
POOL3 = 2048  # the authors' FID features
STATE_FILE = "row.json"
MI_NAMES = ("qmi0", "qmi1")  # does the encoder use z0, z1 at all (ladder experiments)


@dataclass(frozen=True)
class Options:
    """How rows run, the same for every row of a grid."""

    out: Path  # results/PRESET
    data_root: str | None = None
    device: str = "auto"
    progress: bool = True


class StageFailed(RuntimeError):
    """A stage's command stopped with an error (it printed its own `error:` line)."""

    def __init__(self, row: Row, stage: str, code: int):
        super().__init__(f"{row.name}: {stage} stopped (exit code {code})")
        self.row, self.stage, self.code = row, stage, code


class RowStateError(ValueError):
    """An unreadable row.json; the message names the file and the fix."""


class Interrupted(RuntimeError):
    """Training stopped early by a signal; its checkpoint is kept and the next run continues."""


def row_folder(opts: Options, row: Row) -> Path:
    return Path(opts.out) / row.name


def stage_argv(row: Row, stage: str, opts: Options) -> list[str]:
    """The flags of a stage's command, as typed after `python main_sym.py` and the like."""
    s = row.sizes
    argv = ["--call_prefix", row.tag, "--nz0", str(s.nz0), "--nz1", str(s.nz1),
            "--seed", str(row.seed), "--device", opts.device]
    if stage == "train":
        argv += ["--stepsize", f"{s.stepsize:g}", "--bs", str(s.bs),
                 "--niterations", str(s.niterations), "--save_period", str(s.save_period),
                 "--log_period", str(s.log_period)]
    elif stage == "generate":
        argv += ["--chain_steps", str(s.chain_steps)]
    else:
        argv += ["--n", str(s.n), "--chain_steps", str(s.chain_steps), "--bs", str(s.fid_bs),
                 "--feature_bs", str(s.feature_bs)]
        if s.fid_dims != POOL3:
            argv += ["--dims", str(s.fid_dims)]
    if stage != "generate" and opts.data_root:
        argv += ["--data_root", str(opts.data_root)]
    return argv


def stage_key(row: Row, stage: str, opts: Options) -> list[str]:
    """What a stage's result depends on: its flags, and for FID the Inception features."""
    argv = stage_argv(row, stage, opts)
    if stage != "fid":
        return argv
    if "--dims" in argv:  # keyed as before the flag existed, so finished rows stay finished
        at = argv.index("--dims")
        argv = argv[:at] + argv[at + 2:]
    return [*argv, "--fid_dims", str(row.sizes.fid_dims)]


def command_line(row: Row, stage: str, opts: Options) -> str:
    """The stage as a user would type it inside the row's folder."""
    program = {"train": f"python main_{row.method}.py", "generate": "python generate.py",
               "fid": "python -m symvae fid"}[stage]
    line = f"{program} {' '.join(stage_argv(row, stage, opts))}"
    if stage == "fid" and row.sizes.fid_dims != POOL3:
        line += "  # an early Inception block's features: the FIDs compare with nothing"
    return line


def link_experiment(folder: Path, experiment: str) -> None:
    """Make FOLDER a view of the experiment folder: relative links to its .py files."""
    source = REPO_ROOT / experiment
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.py")):
        link = folder / path.name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(path, folder))


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with FOLDER as the working directory (the commands write relative to it)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def call(row: Row, stage: str, command: Callable[[], int | None]) -> None:
    """Run an entry point; an exit with a non-zero code (its one-line user errors, or a
    signal's exit) becomes StageFailed, so the grid can record what finished and say why."""
    try:
        code = command()
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    if code:
        raise StageFailed(row, stage, code)


def read_state(folder: Path, row: Row) -> dict:
    """The row's record (row.json), checked against its schema; RowStateError names the file
    and the fix when it cannot be used."""
    path = folder / STATE_FILE
    if path.exists() and not path.is_file():
        raise RowStateError(f"{path} is a folder, but the row's record is written there; move "
                            "it away")
    if not path.is_file():
        return {"row": row.as_dict(), "stages": {}}
    fix = "delete it to redo the row's bookkeeping (its checkpoint is kept and continued)"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RowStateError(f"{path}: unreadable (byte {err.start} is not UTF-8 text); "
                            f"{fix}") from None
    except (ValueError, OSError) as err:
        raise RowStateError(f"{path}: unreadable ({err}); {fix}") from None
    problem = state_problem(state)
    if problem:
        raise RowStateError(f"{path}: not a row record ({problem}); {fix}")
    return state


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# row.json's schema: what each stage's record holds (run_row adds key, seconds, finished)
_OPTIONAL_NUMBER = (lambda v: v is None or _number(v), "a number or null")
_FIELDS: dict[str, tuple] = {
    "key": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
            "a list of flags"),
    "seconds": (lambda v: _number(v) and v >= 0, "a number of seconds"),
    "finished": (lambda v: isinstance(v, str), "a date"),
}
STAGE_FIELDS: dict[str, dict[str, tuple]] = {
    "train": {"resumed_from": (lambda v: v is None or _whole(v), "a count or null"),
              "iterations": (_whole, "a count"), "train_seconds": _OPTIONAL_NUMBER,
              "qmi0": _OPTIONAL_NUMBER, "qmi1": _OPTIONAL_NUMBER,
              "device": (lambda v: isinstance(v, str), "text"),
              "commit": (lambda v: isinstance(v, str), "text")},
    "generate": {"grids": (lambda v: isinstance(v, list) and all(isinstance(g, str) for g in v),
                           "a list of file names")},
    "fid": {"random_code_fid": (_number, "a number"), "limiting_fid": (_number, "a number"),
            "n": (_whole, "a count"), "chain_steps": (_whole, "a count")},
}


def state_problem(state: object) -> str | None:
    """What in a row record breaks its schema (None: nothing)."""
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        return "no stages"
    if not isinstance(state.get("row", {}), dict):
        return "row is not an object"
    for stage, record in state["stages"].items():
        if stage not in STAGE_FIELDS:
            return f"an unknown stage {stage!r}"
        if not isinstance(record, dict):
            return f"stages.{stage} is not an object"
        for name, (ok, what) in {**_FIELDS, **STAGE_FIELDS[stage]}.items():
            if name in record and not ok(record[name]):
                return f"stages.{stage}.{name} {record[name]!r} is not {what}"
    return None


def write_state(folder: Path, state: dict) -> None:
    text = json.dumps(state, indent=1) + "\n"
    atomic_write(folder / STATE_FILE, lambda f: f.write(text.encode()))


def device_name(flag: str) -> str:
    """The device a --device flag resolves to, in words (GPU model, or CPU model and cores)."""
    import torch

    from symvae.cli import pick_device
    device = pick_device(flag)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores"


def commit() -> str:
    """The repository's commit, with '+dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _model_class(experiment: str):
    from symvae.experiment import load_model_class
    return load_model_class(REPO_ROOT / experiment)


def run_train(row: Row, folder: Path, argv: list[str], opts: Options) -> dict:
    from symvae.evaluate.plot import read_log
    from symvae.learn.train import main as train_main
    model = folder / "models" / f"m_{row.tag}.pt"
    start = 0
    if model.is_file():
        try:
            start = int(ckpt_io.load(model).get("count", 0))
        except ckpt_io.CheckpointError:  # training itself names the file and the fix
            start = None
        argv = [*argv, "--load_prefix", row.tag]
    else:  # the row's folder is the grid's own: a row without a checkpoint starts again
        argv = [*argv, "--overwrite"]
    if not opts.progress:
        argv = [*argv, "--no_progress"]
    with inside(folder):
        call(row, "train", lambda: train_main(_model_class(row.experiment), row.method, argv))
    ckpt = ckpt_io.load(model)
    count = int(ckpt["count"])
    if count < row.sizes.niterations:
        raise Interrupted(f"{row.name}: training stopped at count {count} of "
                          f"{row.sizes.niterations}; {model} is kept and continued next time")
    log = folder / "logs" / f"log-{row.tag}.txt"
    last = (read_log(log) or [{}])[-1] if log.is_file() else {}
    return {"resumed_from": start, "iterations": count, "train_seconds": ckpt.get("elapsed"),
            **{name: last.get(name) for name in MI_NAMES}, "device": device_name(opts.device),
            "commit": commit()}


def run_generate(row: Row, folder: Path, argv: list[str], opts: Options) -> dict:
    from symvae.evaluate.generate import main as generate_main
    with inside(folder):
        call(row, "generate", lambda: generate_main(_model_class(row.experiment), argv))
    return {"grids": [f"images/generated_{k}_{row.tag}.png" for k in ("sh", "sta")]}


def run_fid(row: Row, folder: Path, argv: list[str], opts: Options) -> dict:
    from symvae.evaluate.fid import main as fid_main
    if not opts.progress:
        argv = [*argv, "--no_progress"]
    with inside(folder):
        call(row, "fid", lambda: fid_main(argv))
    records = json.loads((folder / "fid_results.json").read_text())
    last = [r for r in records if r.get("tag") == row.tag][-1]
    from symvae.evaluate.metrics import RECORD_FIGURES
    out = {k: last[k] for k in ("random_code_fid", "limiting_fid", "n", "chain_steps")}
    return out | {k: last[k] for k in (*RECORD_FIGURES, "metric_n") if k in last}


RUNNERS = {"train": run_train, "generate": run_generate, "fid": run_fid}


def stages_to_run(records: dict, row: Row, opts: Options) -> list[str]:
    """The stages to (re)do: from the first without a record of its current flags, on."""
    for i, stage in enumerate(STAGES):
        if records.get(stage, {}).get("key") != stage_key(row, stage, opts):
            return list(STAGES[i:])
    return []


def run_row(row: Row, opts: Options, say: Callable[[str], None] = print) -> dict:
    """Run the row's missing stages in order; returns its state (row.json's content)."""
    folder = row_folder(opts, row)
    link_experiment(folder, row.experiment)
    state = read_state(folder, row)
    todo = stages_to_run(state["stages"], row, opts)
    for stage in STAGES:
        if stage not in todo:
            say(f"{row.name}: {stage} done")
            continue
        for later in todo[todo.index(stage):]:  # each depends on this one's outputs
            state["stages"].pop(later, None)
        write_state(folder, state)
        say(f"{row.name}: {stage}: {command_line(row, stage, opts)}")
        began = time.time()
        result = RUNNERS[stage](row, folder, stage_argv(row, stage, opts), opts)
        state["stages"][stage] = {
            "key": stage_key(row, stage, opts), "seconds": round(time.time() - began, 3),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), **result}
        write_state(folder, state)
    return state


def is_done(row: Row, opts: Options) -> bool:
    """Whether every stage of the row has a record made with its current flags."""
    try:
        return not stages_to_run(read_state(row_folder(opts, row), row)["stages"], row, opts)
    except RowStateError:
        return False
