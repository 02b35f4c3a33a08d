"""The training loop behind main_sym.py and main_elbo.py (SPEC §4–§5).

Per run tag TAG, in the experiment folder:
  logs/log-TAG.txt      '#' milestone lines, and every --log_period iterations and at the
                        end `time: T count: C len: L name: value ...` (running averages)
  logs/stat*-TAG.txt    sorted per-bit mutual information (ladder models)
  models/m_TAG.pt       full checkpoint at iteration 0, every --save_period, and at the end
  images/img_TAG.png    data, reconstructions, single shots and a running limiting chain
                        that advances one step every iteration

`Trainer.run` is the loop and `Trainer.iteration` one step of it; what they write is in
RunOutputs and RunLog, the CUDA graph's use in graph_iteration, what a checkpoint holds in
symvae.learn.train_state and the ways a run stops early in symvae.learn.train_stops. main()
refuses bad starts before the data are loaded, holds the tag's lock, then runs the trainer.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from symvae.cli import (
    TRAIN_BYTES_PER_IMAGE,
    check_memory,
    check_train_args,
    ensure_dirs,
    fail,
    interruptible,
    load_data,
    pick_device,
    seed_everything,
    train_parser,
)
from symvae.data.datasets import DeviceData
from symvae.entry import details_beside, parse_args
from symvae.ground import CheckpointError
from symvae.learn import checkpoint as ckpt_io
from symvae.learn import runtime, train_state
from symvae.learn.capture import CaptureError, capture_count, capture_iteration, make_eager
from symvae.learn.lock import Busy, RunLock
from symvae.learn.rules import LEARNERS, NonFinite
from symvae.learn.stats import BitMI, RunningMeans, bit_trackers
from symvae.learn.train_stops import StopSignals, diverged, skipped, stop_for_signal, write_failed
from symvae.model.hvae import HVAE
from symvae.model.sampling import chain_start, save_grid

GRID_COLUMNS = 10


class RunFiles:
    """Where one tag's outputs live, relative to the experiment folder."""

    def __init__(self, folder: Path, tag: str):
        self.folder, self.tag = folder, tag
        self.log = folder / "logs" / f"log-{tag}.txt"
        self.model = folder / "models" / f"m_{tag}.pt"
        self.image = folder / "images" / f"img_{tag}.png"
        self.lock = folder / "models" / f".m_{tag}.lock"  # held while a run writes this tag

    def stat(self, group: str) -> Path:
        return self.folder / "logs" / f"stat{group}-{self.tag}.txt"


def mi_log_name(group: str) -> str:
    """Bit group 'p1' -> log name 'pmi1'."""
    return f"{group[0]}mi{group[1:]}"


class RunOutputs:
    """What a training run writes, as a part of Trainer (whose state it reads): '#' notes and
    the running averages to the log, then at each save the sample grid, the MI files and the
    checkpoint."""

    def note(self, line: str) -> None:
        """A '#' line about the run itself: kept in `notes`, and logged when a log is open
        (the benchmark's trainers have none)."""
        self.notes.append(line)
        if self.run_log is not None:
            self.log(line)

    def log(self, line: str) -> None:
        self.run_log.write(line)

    def log_values(self) -> dict[str, float]:
        """The log's line of running averages (NonFinite if one is not); returns them."""
        values = running_averages(self.means, self.mi)
        fields = [f"time: {self.elapsed:.1f}", f"count: {self.count}",
                  f"len: {weight_length(self.model):.6g}"]
        fields += [f"{n}: {values[n]:.6g}" for n in self.names if n in values]
        self.log(" ".join(fields))
        return values

    @torch.no_grad()
    def save(self) -> None:
        """Image grid, MI files and checkpoint; the grid's draws leave the training RNG as is."""
        # a finite loss can still come with a non-finite gradient: never save poisoned weights
        if not bool(torch.stack([p.detach().isfinite().all() for p in self.model.parameters()])
                    .all()):
            raise NonFinite("parameters")
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.count)
            self.save_grid()
        for group, tracker in self.mi.items():
            text = "".join(f"{v:.6g}\n" for v in tracker.sorted_values())
            ckpt_io.atomic_write(self.files.stat(group), lambda f, t=text: f.write(t.encode()))
        ckpt_io.save(self.files.model, self.state_dict())

    def save_grid(self) -> None:
        """The sample grid (`grid_rows`) of the current training batch and chain."""
        if self.grid_batch is None:  # nothing trained yet: the first images of the data
            clean = self.data.as_float(self.data.images[:GRID_COLUMNS])
            self.grid_batch = clean, self.noise(clean)
        rows = grid_rows(self.model, *self.grid_batch, self.chain)
        save_grid(torch.cat(rows), self.files.image, nrow=GRID_COLUMNS)


class Trainer(RunOutputs):
    """The paper's training loop for one model and learning method (SPEC §4–§5): `run` to
    --niterations, each `iteration` a learning step on a batch and one step of the sample
    grid's chain; its outputs in RunOutputs, its checkpoint in symvae.learn.train_state, its early
    stops in symvae.learn.train_stops."""

    def __init__(self, model: HVAE, method: str, data: DeviceData, files: RunFiles,
                 args, device: torch.device):
        self.model, self.method, self.data, self.files = model, method, data, files
        self.args, self.device = args, device
        self.learner = LEARNERS[method](model, args.stepsize,
                                        guard=device.type == "cpu" or args.nan_policy == "skip")
        self.names = model.sym_names if method == "sym" else model.elbo_names
        self.noise = type(model).dataset.noise
        # the learning step's precision: fp32, or with --bf16 (CPU) under bf16 autocast
        self.autocast = runtime.learning_precision(model, device, getattr(args, "bf16", False))
        self.means = RunningMeans()
        self.mi = bit_trackers(model.mi_names, model.nz0, model.nz1, device)
        self.count = 0
        self.elapsed = 0.0
        self.skips = 0  # non-finite batches skipped in a row (--nan_policy skip)
        # the grid's running limiting chain, drawn from the training RNG as the authors draw it
        self.chain = chain_start(model, model.chain_start, GRID_COLUMNS)
        self.grid_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (clean, noisy)
        # the iteration runs eagerly until count `capture_at`, then as a replayed graph
        self.capture_at: int | None = None
        self.captured = None
        self.stop_signal: str | None = None  # set by symvae.learn.train_stops.StopSignals
        self.run_log: RunLog | None = None
        self.notes: list[str] = []

    def state_dict(self) -> dict:
        return train_state.state_dict(self)

    def restore(self, ckpt: dict, source: Path) -> str:
        """Load a checkpoint; returns the '#' log line that says what was restored."""
        return train_state.restore(self, ckpt, source,
                                   (GRID_COLUMNS, *self.data.images.shape[1:]))

    # --- the loop -------------------------------------------------------------
    def run(self, resumed: bool) -> int:
        """Save at count 0 unless resumed, then iterate to --niterations, logging every
        --log_period and saving every --save_period, and log and save the last iteration.
        Returns 0, or 128 + a stop signal's number once saved (symvae.learn.train_stops)."""
        args = self.args
        bar = tqdm(total=args.niterations, initial=self.count, disable=args.no_progress,
                   unit="it", dynamic_ncols=True, file=sys.stderr)
        start, first = time.time() - self.elapsed, self.count
        try:
            if not resumed:
                self.save()
            while args.niterations is None or self.count < args.niterations:
                if self.stop_signal:
                    self.elapsed = time.time() - start
                    return stop_for_signal(self)
                self.skipping_iteration()
                self.count += 1
                bar.update(1)
                self.elapsed = time.time() - start
                if self.count % args.log_period == 0:
                    values = self.log_values()
                    bar.set_postfix({n: f"{values[n]:.4g}" for n in self.names[:4]
                                     if n in values}, refresh=False)
                if self.count % args.save_period == 0:
                    self.save()
            if self.count % args.log_period and self.count > first:
                self.log_values()  # the last iteration, so that a short run logs its figures too
            if self.count % args.save_period:
                self.save()
        except NonFinite as err:
            diverged(self, err, bar)
        except OSError as err:  # e.g. a full disk: the atomic write kept the previous files
            bar.close()
            write_failed(self, err)
        bar.close()
        self.log(f"# finished at count {self.count}")
        return 0

    def skipping_iteration(self) -> None:
        """An iteration; a non-finite one is skipped only as symvae.learn.train_stops.skipped
        says."""
        try:
            self.iteration()
            self.skips = 0
        except NonFinite as err:
            if not skipped(self, err):
                raise

    def iteration(self) -> None:
        """One training iteration: the host's sampler bookkeeping, then the device's work,
        replayed from a CUDA graph once one is captured (symvae.learn.capture)."""
        self.data.advance(self.args.bs)
        if not graph_iteration(self):
            self.device_iteration()

    def device_iteration(self) -> None:
        """Batch draw, noise, the learning step, its statistics, then one sampled step of the
        grid's chain, all on the device: no host synchronisation, so that one CUDA graph can
        hold it."""
        clean = self.data.window(self.args.bs)
        x = self.noise(clean)
        with self.autocast():
            logs, logits = self.learner.step(x)
        for group, tracker in self.mi.items():
            tracker.update(logits[group])
        self.means.update(logs)
        with torch.no_grad():  # weights a finite loss left non-finite are caught when saving
            _, out = self.model.limiting_out(self.chain)
            self.chain = self.model.pixels.sample(out.nan_to_num())
        self.grid_batch = clean[:GRID_COLUMNS].clone(), x[:GRID_COLUMNS].clone()


def graph_iteration(trainer: Trainer) -> bool:
    """Whether the captured CUDA graph did the trainer's device iteration (symvae.learn.capture):
    replayed (the first replay is checked against an eager one), or captured from count
    `capture_at` on, which runs it once. A CaptureError leaves the state as before the
    iteration: the graph is dropped, and the caller runs the iteration eagerly."""
    try:
        if trainer.captured is not None:
            first = trainer.captured.checked is None  # this replay is the checked one
            trainer.captured.replay()
            if first:
                trainer.note(f"# CUDA graph captured at count {trainer.count - 1}; its first "
                             f"replay agrees with the eager iteration to "
                             f"{trainer.captured.checked:.2g} (relative)")
            return True
        if trainer.capture_at is not None and trainer.count >= trainer.capture_at \
                and trainer.data.perm is not None:  # small batches keep the stored order longer
            trainer.captured = capture_iteration(trainer)
            return True
    except CaptureError as err:
        trainer.captured = trainer.capture_at = None
        make_eager(trainer.learner.optimizers)
        trainer.note(f"# CUDA graph not used from count {trainer.count}: {err}; "
                     "training continues eagerly")
    return False


def running_averages(means: RunningMeans, mi: dict[str, BitMI]) -> dict[str, float]:
    """The running averages by log name; NonFinite names the first that is not finite."""
    values = means.read()
    if mi:  # the per-bit averages as they stand, not averaged again
        averages = torch.stack([tracker.mean() for tracker in mi.values()]).tolist()
        values.update(zip(map(mi_log_name, mi), averages))
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFinite(bad[0])
    return values


def weight_length(model: HVAE) -> float:
    """The log's `len`: the mean square of the trained parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return float(sum(p.detach().float().square().sum() for p in params)
                 / sum(p.numel() for p in params))


def grid_rows(model: HVAE, clean: torch.Tensor, noisy: torch.Tensor,
              chain: torch.Tensor) -> list[torch.Tensor]:
    """The authors' grid: the first images of the current training batch (MNIST before its
    noise, Fashion-MNIST with it), reconstructions by one limiting step from the noisy
    ones, single shots (means), then the decoder means of one more step of the running
    chain (Fashion-MNIST: that step's sample and its mean), which leaves the chain as is."""
    pixels = model.pixels
    _, recon = model.limiting_out(noisy)
    shots = pixels.mean(model.single_shot(GRID_COLUMNS)[1])
    _, out, sample = model.limiting_step(chain)
    return [noisy if pixels.grid_noisy_data else clean, pixels.mean(recon), shots,
            *pixels.chain_rows(sample, pixels.mean(out))]


class RunLog:
    """The run's log file, open while it trains; a write that fails names the file (a
    failed write does not)."""

    def __init__(self, path: Path, append: bool):
        """Continue the tag's log (`append`) or start it anew."""
        self.path = path
        try:
            self.file = open(path, "a" if append else "w", buffering=1)  # noqa: SIM115 - close()
        except OSError as err:
            fail(f"cannot write {path} ({err.strerror}); fix it or pick another --call_prefix")

    def end_cut_line(self) -> None:
        """A line cut short by a crash stays on its own line."""
        if self.path.stat().st_size and not _ends_with_newline(self.path):
            self.file.write("\n")

    def write(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # the lines it could not flush were reported by write_failed


def main(model_cls: type[HVAE], method: str, argv: list[str] | None = None) -> int:
    """Entry point of main_sym.py / main_elbo.py, run inside the experiment folder.

    Returns 0 when --niterations is reached, 128 + the signal's number when stopped by
    SIGINT (130) or SIGTERM (143) after saving; refusals exit 2, divergence 3, a failed
    write 4 (see symvae.cli.fail).
    """
    return interruptible(lambda: _main(model_cls, method, argv), f"main_{method}")


def _main(model_cls: type[HVAE], method: str, argv: list[str] | None) -> int:
    args = parse_args(train_parser(method), argv)
    check_train_args(args)
    folder = Path.cwd()
    files = RunFiles(folder, args.call_prefix)
    details_beside(files.log.parent, f"error-{args.call_prefix}")  # an unforeseen failure's
    device = pick_device(args.device)
    if args.bf16 and device.type != "cpu":
        fail(f"--bf16: bf16 autocast is offered for CPU training only, and the device is "
             f"{device}; leave --bf16 out there (on CUDA, --tf32 is the faster arithmetic)")
    check_memory("--bs", args.bs, TRAIN_BYTES_PER_IMAGE, device)
    args.precision = runtime.precision_note(runtime.configure(device, tf32=args.tf32,
                                                              strict_fp32=args.fp32_strict),
                                            bf16=args.bf16)
    seed_everything(args.seed)
    model = model_cls(args.nz0, args.nz1)
    check_outputs(files, model)
    ckpt, source = checked_start(args, folder, files, model, method)  # refusals before the data

    data = load_data(model_cls.dataset, args.data_root, device)
    if args.bs > len(data):
        fail(f"--bs {args.bs}: larger than the data set ({len(data)} images)")
    ensure_dirs(folder, ("images", "logs", "models"))
    try:
        lock = RunLock(files.lock).acquire()
    except Busy as busy:
        fail(f"tag {args.call_prefix} is in use by a running process (PID {busy.pid}) in "
             f"{folder}; wait for it to end, stop it, or pick another --call_prefix")
    except OSError as err:
        fail(f"cannot create {files.lock} ({err.strerror}); run from a writable experiment folder")
    try:
        # what another run did until we held the tag counts: check again
        ckpt, source = checked_start(args, folder, files, model, method)
        return _train(model, method, data, files, args, device, ckpt, source, argv)
    finally:
        lock.release()


def _train(model: HVAE, method: str, data: DeviceData, files: RunFiles, args,
           device: torch.device, ckpt: dict | None, source: Path | None,
           argv: list[str] | None) -> int:
    """The part of main() that runs while the tag is held: the log opened (continued when
    the run continues its tag), the stop signals caught, the loop run."""
    trainer, note = _ready_trainer(model, method, data, files, args, device, ckpt, source)
    resumed = ckpt is not None and ckpt.get("format") is not None and \
        args.load_prefix == args.call_prefix and trainer.count > 0
    append = args.load_prefix == args.call_prefix and files.log.exists()
    trainer.run_log = RunLog(files.log, append)
    signals = StopSignals(trainer).install()
    try:
        if append:
            trainer.run_log.end_cut_line()
        command = " ".join(sys.argv[1:] if argv is None else argv)
        trainer.log(f"# {method} {model.experiment} {command}"
                    f" (device {device}, {args.precision}, torch {torch.__version__})")
        if note:
            trainer.log(note)
        return trainer.run(resumed)
    except OSError as err:  # the log itself cannot be written
        write_failed(trainer, err)
    finally:
        signals.restore()
        trainer.run_log.close()


def _ready_trainer(model: HVAE, method: str, data: DeviceData, files: RunFiles, args,
                   device: torch.device, ckpt: dict | None,
                   source: Path | None) -> tuple[Trainer, str | None]:
    """The trainer on the device, restored from `ckpt` if any, with the '#' log line that
    says from what; refuses a damaged checkpoint and one already past --niterations."""
    for stale in files.model.parent.glob(f".{files.model.name}.tmp*"):  # left by a killed save
        stale.unlink()
    if args.detect_anomaly:
        torch.autograd.set_detect_anomaly(True)
    model.to(device)
    trainer = Trainer(model, method, data, files, args, device)
    trainer.capture_at = capture_count(args, device)
    try:
        note = trainer.restore(ckpt, source) if ckpt is not None else None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:  # a crafted file
        fail(f"{source}: a damaged checkpoint ({type(err).__name__}: {err}); retrain or pick "
             "another tag")
    if args.niterations is not None and trainer.count > args.niterations:
        fail(f"--niterations {args.niterations}: {source} is already at count {trainer.count}; "
             "give a larger --niterations to continue it")
    if args.compile:
        runtime.compile_model(model)
    return trainer, note


def run_outputs(files: RunFiles, model: HVAE) -> tuple[Path, ...]:
    """Every file a run of the tag writes: all of them belong to the tag's history."""
    return (files.model, files.log, files.image, *map(files.stat, model.mi_names))


def check_outputs(files: RunFiles, model: HVAE) -> None:
    """Refuse a folder standing where the run writes one of its files."""
    for path in run_outputs(files, model):
        if path.is_dir():
            fail(f"{path} is a folder, but the run writes a file there; move it away or pick "
                 "another --call_prefix")


def check_fresh(args, files: RunFiles, model: HVAE) -> None:
    """A run that does not continue its own tag replaces the tag's files (the log is started
    anew): refuse when any of them exists, unless --overwrite says to, so that an earlier run's
    history is never lost because only its checkpoint is gone."""
    if args.load_prefix == args.call_prefix or args.overwrite:
        return
    earlier = [p for p in run_outputs(files, model) if p.exists() or p.is_symlink()]
    if not earlier:
        return
    tag = args.call_prefix
    if files.model in earlier:
        fail(f"{files.model} already exists: continue it with --load_prefix {tag}, pick "
             "another --call_prefix, or pass --overwrite")
    names = ", ".join(str(p.relative_to(files.folder)) for p in earlier)
    fail(f"tag {tag} has files of an earlier run ({names}) that a fresh run would replace; "
         "pick another --call_prefix, or pass --overwrite to replace them")


def checked_start(args, folder: Path, files: RunFiles, model: HVAE,
                  method: str) -> tuple[dict | None, Path | None]:
    """(checkpoint, its path) to start from, after refusing every mismatch with one line."""
    ckpt, source = None, None
    if args.load_prefix is not None:
        source = RunFiles(folder, args.load_prefix).model
        try:
            ckpt = ckpt_io.load(source)
            ckpt_io.check_compatible(ckpt, source, model, model.experiment, args.nz0, args.nz1)
        except CheckpointError as err:
            fail(str(err))
        other = ckpt.get("method")
        if args.load_prefix == args.call_prefix and ckpt.get("format") and other != method:
            fail(f"{source} holds a run of main_{other}.py; continue it with main_{other}.py, "
                 f"or start {method} learning from it under a new tag (--call_prefix NEW "
                 f"--load_prefix {args.load_prefix})")
    check_fresh(args, files, model)
    return ckpt, source


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
