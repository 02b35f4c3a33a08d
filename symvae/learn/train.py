"""The training loop behind main_sym.py and main_elbo.py (SPEC §4–§5).

Per run tag TAG, in the experiment folder:
  logs/log-TAG.txt      '#' milestone lines, and every --log_period iterations and at the
                        end `time: T count: C len: L name: value ...` (running averages)
  logs/stat*-TAG.txt    sorted per-bit mutual information (ladder models)
  models/m_TAG.pt       full checkpoint at iteration 0, every --save_period, and at the end
  images/img_TAG.png    data, reconstructions, single shots and a running limiting chain
                        that advances one step every iteration
"""
from __future__ import annotations

import math
import signal
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
from symvae.learn import runtime
from symvae.learn.capture import CaptureError, capture_count, capture_iteration, make_eager
from symvae.learn.lock import Busy, RunLock
from symvae.learn.rules import LEARNERS, NonFinite
from symvae.learn.stats import RunningMeans, bit_trackers
from symvae.model.hvae import HVAE
from symvae.model.sampling import chain_start, save_grid

GRID_COLUMNS = 10
MAX_CONSECUTIVE_SKIPS = 100


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


class Trainer:
    def __init__(self, model: HVAE, method: str, data: DeviceData, files: RunFiles,
                 args, device: torch.device):
        self.model, self.method, self.data, self.files = model, method, data, files
        self.args, self.device = args, device
        self.learner = LEARNERS[method](model, args.stepsize,
                                        guard=device.type == "cpu" or args.nan_policy == "skip")
        self.names = model.sym_names if method == "sym" else model.elbo_names
        self.noise = type(model).dataset.noise
        self.means = RunningMeans()
        self.mi = bit_trackers(model.mi_names, model.nz0, model.nz1, device)
        self.count = 0
        self.elapsed = 0.0
        # the grid's running limiting chain, drawn from the training RNG as the authors draw it
        self.chain = chain_start(model, model.chain_start, GRID_COLUMNS)
        self.grid_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (clean, noisy)
        # the iteration runs eagerly until count `capture_at`, then as a replayed graph
        self.capture_at: int | None = None
        self.captured = None
        self.stop_signal: str | None = None
        self.log_file = None
        self.notes: list[str] = []

    # --- state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        a = self.args
        return {
            "format": ckpt_io.CHECKPOINT_FORMAT, "experiment": self.model.experiment,
            "method": self.method, "nz0": a.nz0, "nz1": a.nz1,
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.learner.optimizers],
            "count": self.count, "elapsed": self.elapsed,
            "means": self.means.state_dict(),
            "mi": {g: t.state_dict() for g, t in self.mi.items()},
            "sampler": self.data.state_dict(), "chain": self.chain,
            "rng": ckpt_io.rng_state(), "args": {"bs": a.bs, "stepsize": a.stepsize},
        }

    def restore(self, ckpt: dict, source: Path) -> str:
        """Load a checkpoint; returns the '#' log line that says what was restored."""
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("format") is None:
            self._restore_mi(ckpt)
            what = "the authors' weights (converted)" if ckpt.get("authors") else "bare weights"
            carried = "; MI statistics carried over" if ckpt.get("mi") else ""
            return f"# started from {what} {source}{carried}; optimisers and count start fresh"
        if ckpt.get("method") != self.method:
            return (f"# started from {source} ({ckpt.get('method')} checkpoint, count "
                    f"{ckpt['count']}); optimisers and count start fresh for {self.method}")
        for opt, state in zip(self.learner.optimizers, ckpt["optimizers"], strict=True):
            opt.load_state_dict(state)
            for group in opt.param_groups:  # --stepsize of this command, not the file's
                group["lr"] = self.args.stepsize
        # device-neutral: a captured run saves Adam's capturable form, which only a CUDA
        # run can step; a resumed run switches again when it captures
        make_eager(self.learner.optimizers)
        self.count, self.elapsed = int(ckpt["count"]), float(ckpt.get("elapsed", 0.0))
        # the statistics continue on the training device, wherever the file was written
        self.means.load_state_dict(ckpt_io.to_device(ckpt["means"], self.device))
        self._restore_mi(ckpt)
        self.data.load_state_dict(ckpt["sampler"])
        chain = ckpt.get("chain")
        check_chain(chain, (GRID_COLUMNS, *self.data.images.shape[1:]))
        if chain is not None:
            self.chain = chain.to(self.device)
        ckpt_io.set_rng_state(ckpt["rng"])
        old = ckpt.get("args", {}).get("stepsize", self.args.stepsize)
        change = f"; --stepsize {old:g} -> {self.args.stepsize:g}" \
            if old != self.args.stepsize else ""
        return f"# resumed from {source} at count {self.count}{change}"

    def _restore_mi(self, ckpt: dict) -> None:
        """The file's MI statistics, on the training device, for the groups it has."""
        for group, tracker in self.mi.items():
            if group in ckpt.get("mi", {}):
                tracker.load_state_dict(ckpt_io.to_device(ckpt["mi"][group], self.device))

    # --- outputs --------------------------------------------------------------
    def note(self, line: str) -> None:
        """A '#' line about the run itself: kept in `notes`, and logged when a log is open
        (the benchmark's trainers have none)."""
        self.notes.append(line)
        if self.log_file is not None:
            self.log(line)

    def log(self, line: str) -> None:
        try:
            self.log_file.write(line + "\n")
            self.log_file.flush()
        except OSError as err:  # name the log: a failed write does not
            raise OSError(err.errno, err.strerror, str(self.files.log)) from err

    def log_values(self) -> dict[str, float]:
        values = self.means.read()
        if self.mi:  # the per-bit averages as they stand, not averaged again
            mi = torch.stack([tracker.mean() for tracker in self.mi.values()]).tolist()
            values.update(zip(map(mi_log_name, self.mi), mi))
        bad = [n for n, v in values.items() if not math.isfinite(v)]
        if bad:
            raise NonFinite(bad[0])
        params = [p for p in self.model.parameters() if p.requires_grad]
        length = float(sum(p.detach().float().square().sum() for p in params)
                       / sum(p.numel() for p in params))
        fields = [f"time: {self.elapsed:.1f}", f"count: {self.count}", f"len: {length:.6g}"]
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
        """The authors' grid: the first images of the current training batch (MNIST before its
        noise, Fashion-MNIST with it), reconstructions by one limiting step from the noisy
        ones, single shots (means), then the decoder means of one more step of the running
        chain (Fashion-MNIST: that step's sample and its mean), which leaves the chain as is."""
        model, pixels = self.model, self.model.pixels
        if self.grid_batch is None:  # nothing trained yet: the first images of the data
            clean = self.data.as_float(self.data.images[:GRID_COLUMNS])
            self.grid_batch = clean, self.noise(clean)
        clean, noisy = self.grid_batch
        _, recon = model.limiting_out(noisy)
        shots = pixels.mean(model.single_shot(GRID_COLUMNS)[1])
        _, out, sample = model.limiting_step(self.chain)
        rows = [noisy if pixels.grid_noisy_data else clean, pixels.mean(recon), shots,
                *pixels.chain_rows(sample, pixels.mean(out))]
        save_grid(torch.cat(rows), self.files.image, nrow=GRID_COLUMNS)

    # --- loop -----------------------------------------------------------------
    def iteration(self) -> None:
        """One training iteration: the host's sampler bookkeeping, then the device's work,
        replayed from a CUDA graph once one is captured (symvae.learn.capture)."""
        self.data.advance(self.args.bs)
        try:
            if self.captured is not None:
                first = self.captured.checked is None  # this replay is the checked one
                self.captured.replay()
                if first:
                    self.note(f"# CUDA graph captured at count {self.count - 1}; its first "
                              f"replay agrees with the eager iteration to "
                              f"{self.captured.checked:.2g} (relative)")
                return
            if self.capture_at is not None and self.count >= self.capture_at \
                    and self.data.perm is not None:  # small batches keep the stored order longer
                self.captured = capture_iteration(self)
                return
        except CaptureError as err:  # the state is as before the iteration: run it eagerly
            self.captured = self.capture_at = None
            make_eager(self.learner.optimizers)
            self.note(f"# CUDA graph not used from count {self.count}: {err}; "
                      "training continues eagerly")
        self.device_iteration()

    def device_iteration(self) -> None:
        """Batch draw, noise, the learning step, its statistics, then one sampled step of the
        grid's chain, all on the device: no host synchronisation, so that one CUDA graph can
        hold it."""
        clean = self.data.window(self.args.bs)
        x = self.noise(clean)
        logs, logits = self.learner.step(x)
        for group, tracker in self.mi.items():
            tracker.update(logits[group])
        self.means.update(logs)
        with torch.no_grad():  # weights a finite loss left non-finite are caught when saving
            _, out = self.model.limiting_out(self.chain)
            self.chain = self.model.pixels.sample(out.nan_to_num())
        self.grid_batch = clean[:GRID_COLUMNS].clone(), x[:GRID_COLUMNS].clone()

    def run(self, resumed: bool) -> int:
        args = self.args
        bar = tqdm(total=args.niterations, initial=self.count, disable=args.no_progress,
                   unit="it", dynamic_ncols=True, file=sys.stderr)
        skips, start, first = 0, time.time() - self.elapsed, self.count
        try:
            if not resumed:
                self.save()
            while args.niterations is None or self.count < args.niterations:
                if self.stop_signal:
                    self.elapsed = time.time() - start
                    self.save()
                    self.log(f"# stopped by {self.stop_signal} at count {self.count}; "
                             f"checkpoint saved")
                    print(f"\n{self.stop_signal}: checkpoint saved at count {self.count} to "
                          f"{self.files.model}; continue with --load_prefix {self.files.tag}",
                          file=sys.stderr)
                    return 128 + signal.Signals[self.stop_signal].value
                try:
                    self.iteration()
                    skips = 0
                except NonFinite as err:
                    if args.nan_policy == "stop":
                        raise
                    skips += 1
                    self.log(f"# skipped a batch at count {self.count}: non-finite {err.term}")
                    if skips >= MAX_CONSECUTIVE_SKIPS:
                        raise
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
            msg = (f"non-finite parameters at count {self.count}, found before saving"
                   if err.term == "parameters" else
                   f"non-finite {err.term} at iteration {self.count + 1}"
                   if self.learner.guard else
                   f"non-finite {err.term} within the {args.log_period} iterations before "
                   f"count {self.count}")
            if skips >= MAX_CONSECUTIVE_SKIPS:
                msg += f" after {skips} skipped batches in a row"
            self.log(f"# stopped: {msg}; last good checkpoint kept")
            bar.close()
            fail(f"{msg}; the run stopped and {self.files.model} keeps the last good "
                 "checkpoint. Lower --stepsize (or use --nan_policy skip) and continue with "
                 f"--load_prefix {self.files.tag}.", code=3)
        except OSError as err:  # e.g. a full disk: the atomic write kept the previous files
            bar.close()
            self.write_failed(err)
        bar.close()
        self.log(f"# finished at count {self.count}")
        return 0

    def write_failed(self, err: OSError) -> None:
        """Stop on a failed write (exit 4): the log's stop line if it can still be written."""
        what = f"cannot write {err.filename or 'an output file'} ({err.strerror or err})"
        try:
            self.log(f"# stopped: {what} at count {self.count}")
        except (OSError, ValueError):
            pass  # the log is what cannot be written (or was closed)
        if self.files.model.is_file():
            after = (f"{self.files.model} keeps the last checkpoint. Free space or fix "
                     f"permissions, then continue with --load_prefix {self.files.tag}")
        else:
            after = "no checkpoint was written. Free space or fix permissions and start again"
        fail(f"{what} at count {self.count}; {after}", code=4)

    def install_signal_handlers(self) -> dict:
        """Route SIGINT/SIGTERM to a save-and-stop; returns the previous handlers."""
        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self.stop_signal:  # second signal: leave at once
                print(f"\n{name} again: exiting without saving", file=sys.stderr)
                raise SystemExit(128 + signum)
            self.stop_signal = name
            print(f"\n{name}: saving a checkpoint after this iteration "
                  "(press Ctrl-C again to quit at once)", file=sys.stderr)
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


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
    check_memory("--bs", args.bs, TRAIN_BYTES_PER_IMAGE, device)
    args.precision = runtime.precision_note(runtime.configure(device, tf32=args.tf32,
                                                              strict_fp32=args.fp32_strict))
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
    """The part of main() that runs while the tag is held."""
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
    resumed = ckpt is not None and ckpt.get("format") is not None and \
        args.load_prefix == args.call_prefix and trainer.count > 0
    mode = "a" if args.load_prefix == args.call_prefix and files.log.exists() else "w"
    try:
        trainer.log_file = open(files.log, mode, buffering=1)  # noqa: SIM115 - closed below
    except OSError as err:
        fail(f"cannot write {files.log} ({err.strerror}); fix it or pick another --call_prefix")
    previous = trainer.install_signal_handlers()
    try:
        if mode == "a" and files.log.stat().st_size and not _ends_with_newline(files.log):
            trainer.log_file.write("\n")  # a line cut short by a crash stays on its own line
        command = " ".join(sys.argv[1:] if argv is None else argv)
        trainer.log(f"# {method} {model.experiment} {command}"
                    f" (device {device}, {args.precision}, torch {torch.__version__})")
        if note:
            trainer.log(note)
        return trainer.run(resumed)
    except OSError as err:  # the log itself cannot be written
        trainer.write_failed(err)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        try:
            trainer.log_file.close()
        except OSError:
            pass  # the lines it could not flush were reported by write_failed


def check_chain(chain: object, shape: tuple[int, ...]) -> None:
    """ValueError unless a checkpoint's grid chain is None or a batch of `shape` images."""
    if chain is not None and (not isinstance(chain, torch.Tensor) or chain.shape != shape):
        raise ValueError(f"its image-grid chain has shape {tuple(getattr(chain, 'shape', ()))}, "
                         f"expected {shape}")


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
