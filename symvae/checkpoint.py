"""Checkpoints: atomic writes, safe loads, and the checks that name what is wrong.

A full checkpoint is a dict (format CHECKPOINT_FORMAT) holding the model, the
optimisers, the iteration count, RNG states, running statistics and the
arguments that shaped the model. A bare state dict is accepted too, ours or the
authors' (`check_compatible` converts theirs through symvae.convert). Loading
never unpickles code (weights_only=True).
"""
from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = "symvae-checkpoint-1"
# what a full checkpoint must hold for an exact resume (see Trainer.state_dict)
REQUIRED_KEYS = ("experiment", "method", "nz0", "nz1", "model", "optimizers", "count", "means",
                 "sampler", "rng")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message that names it and the fix."""


def atomic_write(path: Path, write) -> None:
    """Write through `write(file)` into a temporary file beside `path`, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # name the file the user knows, not the temporary one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save(path: Path, state: dict) -> None:
    """torch.save `state` to `path` atomically.

    Serialised in memory first: torch reports a failed file write (a full disk) as a
    RuntimeError without errno, while a plain write raises the OSError that says why.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(_to_lists(random.getstate())),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():  # a resumed job may see fewer GPUs
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))


def to_device(value: object, device: torch.device) -> object:
    """The tensors in nested dicts/lists/tuples moved to `device` (checkpoints load on CPU)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file safely; returns a full-checkpoint dict.

    A bare state dict comes back as {"model": state, "format": None}.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; check --call_prefix/--load_prefix "
                              "and that you run inside the experiment folder that trained it")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _calls_code(path):
            raise CheckpointError(_unreadable(path, err)) from None
        raise CheckpointError(f"{path}: refused, because loading it could run code (it holds "
                              "pickled objects other than tensors and plain values); a symvae "
                              "checkpoint never does. Retrain or pick another tag") from None
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied; make it readable") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(_unreadable(path, err)) from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing or not isinstance(obj["model"], dict):
            raise CheckpointError(f"{path}: a damaged checkpoint (no {', '.join(missing) or 'model'}"
                                  "); retrain or pick another tag")
        count = obj["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CheckpointError(f"{path}: a damaged checkpoint (count {count!r} is not an "
                                  "iteration count); retrain or pick another tag")
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": None, "model": obj}
    raise CheckpointError(f"{path}: holds no model state dict; pick a models/m_TAG.pt file")


def _calls_code(path: Path) -> bool:
    """Whether the pickle in a file (plain, or a torch zip's data.pkl) imports or calls anything.

    Asked only after the weights-only loader refused it: a pickle that does is refused for
    the code it could run; one that does not is simply unreadable.
    """
    import pickletools
    import zipfile
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = path.read_bytes()
        return any(op.name in CALLING_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - not even a pickle
        return False


# pickle opcodes that import a name or call one
CALLING_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _unreadable(path: Path, err: Exception) -> str:
    first = (str(err).strip().splitlines() or ["empty file" if path.stat().st_size == 0
                                                else "no details"])[0]
    return (f"{path}: not a readable checkpoint ({type(err).__name__}: {first[:120]}); the file "
            "may be truncated or not a symvae/PyTorch checkpoint — retrain or pick another tag")


def check_compatible(ckpt: dict, path: Path, model: nn.Module, experiment: str,
                     nz0: int, nz1: int) -> None:
    """Refuse a checkpoint of another experiment or of other sizes, saying what it has.

    A bare state dict is first brought to our names (an authors' one is converted).
    """
    if not ckpt.get("format"):
        from symvae.convert import adopt_bare  # symvae.convert builds on this module
        adopt_bare(ckpt, path, experiment)
    else:
        if ckpt.get("experiment") != experiment:
            raise CheckpointError(
                f"{path}: a {ckpt.get('experiment')} checkpoint, but this folder is "
                f"{experiment}; run it from the {ckpt.get('experiment')} folder")
        sizes = (ckpt.get("nz0"), ckpt.get("nz1"))
        if sizes != (nz0, nz1):
            raise CheckpointError(f"{path}: model has --nz0 {sizes[0]} --nz1 {sizes[1]}, but "
                                  f"--nz0 {nz0} --nz1 {nz1} were given; pass the file's sizes")
    state, own = ckpt["model"], model.state_dict()
    if set(state) != set(own):
        missing = sorted(set(own) - set(state))[:3]
        raise CheckpointError(f"{path}: parameter names do not match this experiment's model "
                              f"({experiment}; e.g. missing {missing}); is it from another "
                              "experiment folder?")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is not a tensor; the file is damaged — retrain "
                                  "or pick another tag")
        if tensor.shape != own[name].shape:
            sizes = _guess_sizes(state)
            hint = (f"the file was trained with other sizes: {sizes}"
                    if sizes != f"--nz0 {nz0} --nz1 {nz1}" else
                    f"the sizes match, so it is likely from another experiment than {experiment}")
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[name].shape)}; {hint}")
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values; the model "
                                  "diverged or the file is damaged — use an earlier checkpoint "
                                  "or retrain")


def _guess_sizes(state: dict) -> str:
    w = state.get("p_z1.skip.weight")  # Linear(nz0, nz1): weight [nz1, nz0]
    if w is None or w.dim() != 2:
        return "sizes unknown"
    return f"--nz0 {w.shape[1]} --nz1 {w.shape[0]}"
