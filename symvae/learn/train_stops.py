"""How a training run ends before --niterations, each way with its exit code and one line
that says what to do next (symvae.learn.train's loop calls these):

  a stop signal   SIGINT or SIGTERM: the run saves after its iteration, then returns
                  128 + the signal's number; a second one exits at once, unsaved
  divergence      a non-finite value: exit 3, the last good checkpoint kept; with
                  --nan_policy skip a bad batch is skipped instead, up to
                  MAX_CONSECUTIVE_SKIPS in a row
  a failed write  e.g. a full disk: exit 4, the previous files kept by the atomic writes

The functions take the trainer (symvae.learn.train.Trainer).
"""
from __future__ import annotations

import signal
import sys
from typing import NoReturn

from symvae.cli import fail
from symvae.learn.rules import NonFinite

MAX_CONSECUTIVE_SKIPS = 100


class StopSignals:
    """SIGINT and SIGTERM set the trainer's `stop_signal`, which its loop reads before each
    iteration to save and stop; `restore` puts the caller's handlers back."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous: dict = {}

    def install(self) -> StopSignals:
        self.previous = {sig: signal.signal(sig, self.handler) for sig in self.SIGNALS}
        return self

    def restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.trainer.stop_signal:  # second signal: leave at once
            print(f"\n{name} again: exiting without saving", file=sys.stderr)
            raise SystemExit(128 + signum)
        self.trainer.stop_signal = name
        print(f"\n{name}: saving a checkpoint after this iteration "
              "(press Ctrl-C again to quit at once)", file=sys.stderr)


def stop_for_signal(trainer) -> int:
    """Save and stop for the signal that asked to: returns 128 + its number."""
    trainer.save()
    trainer.log(f"# stopped by {trainer.stop_signal} at count {trainer.count}; checkpoint saved")
    files = trainer.files
    print(f"\n{trainer.stop_signal}: checkpoint saved at count {trainer.count} to "
          f"{files.model}; continue with --load_prefix {files.tag}", file=sys.stderr)
    return 128 + signal.Signals[trainer.stop_signal].value


def skipped(trainer, err: NonFinite) -> bool:
    """Whether the run goes on past a non-finite batch: only with --nan_policy skip, which
    logs it, and not after MAX_CONSECUTIVE_SKIPS in a row (`trainer.skips` counts them)."""
    if trainer.args.nan_policy == "stop":
        return False
    trainer.skips += 1
    trainer.log(f"# skipped a batch at count {trainer.count}: non-finite {err.term}")
    return trainer.skips < MAX_CONSECUTIVE_SKIPS


def diverged(trainer, err: NonFinite, bar) -> NoReturn:
    """Stop on a non-finite value (exit 3): the log's stop line, the progress bar closed."""
    msg = (f"non-finite parameters at count {trainer.count}, found before saving"
           if err.term == "parameters" else
           f"non-finite {err.term} at iteration {trainer.count + 1}"
           if trainer.learner.guard else
           f"non-finite {err.term} within the {trainer.args.log_period} iterations before "
           f"count {trainer.count}")
    if trainer.skips >= MAX_CONSECUTIVE_SKIPS:
        msg += f" after {trainer.skips} skipped batches in a row"
    trainer.log(f"# stopped: {msg}; last good checkpoint kept")
    bar.close()
    fail(f"{msg}; the run stopped and {trainer.files.model} keeps the last good "
         "checkpoint. Lower --stepsize (or use --nan_policy skip) and continue with "
         f"--load_prefix {trainer.files.tag}.", code=3)


def write_failed(trainer, err: OSError) -> NoReturn:
    """Stop on a failed write (exit 4): the log's stop line if it can still be written."""
    files = trainer.files
    what = f"cannot write {err.filename or 'an output file'} ({err.strerror or err})"
    try:
        trainer.log(f"# stopped: {what} at count {trainer.count}")
    except (OSError, ValueError):
        pass  # the log is what cannot be written (or was closed)
    if files.model.is_file():
        after = (f"{files.model} keeps the last checkpoint. Free space or fix "
                 f"permissions, then continue with --load_prefix {files.tag}")
    else:
        after = "no checkpoint was written. Free space or fix permissions and start again"
    fail(f"{what} at count {trainer.count}; {after}", code=4)
