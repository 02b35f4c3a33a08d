"""A training run's checkpoint: what `Trainer.state_dict` saves (symvae.learn.checkpoint checks it
field by field when loading) and how `Trainer.restore` continues a run from it, or starts
one from bare or converted weights.

The functions take the trainer (symvae.learn.train.Trainer) and read or set its state in place.
"""
from __future__ import annotations

from pathlib import Path

import torch

from symvae.learn import checkpoint as ckpt_io
from symvae.learn.capture import make_eager


def state_dict(trainer) -> dict:
    """Everything an exact resume needs: weights, optimisers, count and time, statistics,
    the sampler, the grid's chain, every RNG, and the flags that shape the run."""
    a = trainer.args
    return {
        "format": ckpt_io.CHECKPOINT_FORMAT, "experiment": trainer.model.experiment,
        "method": trainer.method, "nz0": a.nz0, "nz1": a.nz1,
        "model": trainer.model.state_dict(),
        "optimizers": [opt.state_dict() for opt in trainer.learner.optimizers],
        "count": trainer.count, "elapsed": trainer.elapsed,
        "means": trainer.means.state_dict(),
        "mi": {g: t.state_dict() for g, t in trainer.mi.items()},
        "sampler": trainer.data.state_dict(), "chain": trainer.chain,
        "rng": ckpt_io.rng_state(), "args": {"bs": a.bs, "stepsize": a.stepsize},
    }


def restore(trainer, ckpt: dict, source: Path, chain_shape: tuple[int, ...]) -> str:
    """Load a checkpoint into the trainer; returns the '#' log line that says what was
    restored. Only a full checkpoint of the same method continues its run."""
    trainer.model.load_state_dict(ckpt["model"])
    if ckpt.get("format") is None:
        restore_mi(trainer, ckpt)
        what = "the authors' weights (converted)" if ckpt.get("authors") else "bare weights"
        carried = "; MI statistics carried over" if ckpt.get("mi") else ""
        return f"# started from {what} {source}{carried}; optimisers and count start fresh"
    if ckpt.get("method") != trainer.method:
        return (f"# started from {source} ({ckpt.get('method')} checkpoint, count "
                f"{ckpt['count']}); optimisers and count start fresh for {trainer.method}")
    stepsize = trainer.args.stepsize
    continue_run(trainer, ckpt, chain_shape)
    old = ckpt.get("args", {}).get("stepsize", stepsize)
    change = f"; --stepsize {old:g} -> {stepsize:g}" if old != stepsize else ""
    return f"# resumed from {source} at count {trainer.count}{change}"


def continue_run(trainer, ckpt: dict, chain_shape: tuple[int, ...]) -> None:
    """Everything of a full checkpoint but the weights: optimisers (at this command's
    --stepsize), count and time, statistics, the sampler, the grid's chain and the RNGs."""
    for opt, state in zip(trainer.learner.optimizers, ckpt["optimizers"], strict=True):
        opt.load_state_dict(state)
        for group in opt.param_groups:  # --stepsize of this command, not the file's
            group["lr"] = trainer.args.stepsize
    # device-neutral: a captured run saves Adam's capturable form, which only a CUDA
    # run can step; a resumed run switches again when it captures
    make_eager(trainer.learner.optimizers)
    trainer.count, trainer.elapsed = int(ckpt["count"]), float(ckpt.get("elapsed", 0.0))
    # the statistics continue on the training device, wherever the file was written
    trainer.means.load_state_dict(ckpt_io.to_device(ckpt["means"], trainer.device))
    restore_mi(trainer, ckpt)
    trainer.data.load_state_dict(ckpt["sampler"])
    chain = ckpt.get("chain")
    check_chain(chain, chain_shape)
    if chain is not None:
        trainer.chain = chain.to(trainer.device)
    ckpt_io.set_rng_state(ckpt["rng"])


def restore_mi(trainer, ckpt: dict) -> None:
    """The file's MI statistics, on the training device, for the groups it has."""
    for group, tracker in trainer.mi.items():
        if group in ckpt.get("mi", {}):
            tracker.load_state_dict(ckpt_io.to_device(ckpt["mi"][group], trainer.device))


def check_chain(chain: object, shape: tuple[int, ...]) -> None:
    """ValueError unless a checkpoint's grid chain is None or a batch of `shape` images."""
    if chain is not None and (not isinstance(chain, torch.Tensor) or chain.shape != shape):
        raise ValueError(f"its image-grid chain has shape {tuple(getattr(chain, 'shape', ()))}, "
                         f"expected {shape}")
