"""Checkpoints: atomic writes, safe loads, and the checks that name what is wrong.

A full checkpoint is a dict (format CHECKPOINT_FORMAT) holding the model, the
optimisers, the iteration count, RNG states, running statistics and the
arguments that shaped the model. A bare state dict is accepted too, ours or the
authors' (`check_compatible` converts theirs through symvae.learn.convert). Loading
never unpickles code (weights_only=True).
"""
from __future__ import annotations

import io
import math
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from symvae.ground import CheckpointError, atomic_write
from symvae.learn.authors_format import adopt_bare

CHECKPOINT_FORMAT = "symvae-checkpoint-1"
# what a full checkpoint must hold for an exact resume (see Trainer.state_dict)
REQUIRED_KEYS = ("experiment", "method", "nz0", "nz1", "model", "optimizers", "count", "means",
                 "sampler", "rng")


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
            absent = ", ".join(missing) or "model"
            raise CheckpointError(f"{path}: a damaged checkpoint (no {absent}); "
                                  "retrain or pick another tag")
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
    """Refuse a checkpoint of another experiment or of other sizes, saying what it has, or one
    that breaks the schema anywhere (`validate`).

    A bare state dict is first brought to our names (an authors' one is converted).
    """
    if not ckpt.get("format"):
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
            raise CheckpointError(f"{path}: {name} is not a tensor; the file is damaged — "
                                  "retrain or pick another tag")
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
    validate(ckpt, path, model)  # and every other field, against the one schema


def _guess_sizes(state: dict) -> str:
    w = state.get("p_z1.skip.weight")  # Linear(nz0, nz1): weight [nz1, nz0]
    if w is None or w.dim() != 2:
        return "sizes unknown"
    return f"--nz0 {w.shape[1]} --nz1 {w.shape[0]}"


# --- the schema of a full checkpoint ---------------------------------------------------------
# What Trainer.state_dict writes, field by field: types, shapes, ranges and finiteness. Every
# field is checked when the file is loaded, so a damaged or hand-edited file is refused in one
# line before training, and a NaN that came from the file is never taken for divergence.

GRID_CHAIN = 10  # images in the training grid's running chain (symvae.learn.train.GRID_COLUMNS)
NUMPY_KEYS = 624  # MT19937's state words


class _Bad(ValueError):
    """One field that breaks the schema; the message names it."""


def validate(ckpt: dict, path: Path, model: nn.Module) -> None:
    """Refuse (CheckpointError, one line) a checkpoint any field of which is not what a run of
    `model` writes. Weights are checked by `check_compatible`; bare state dicts carry no more
    than weights and, converted, MI statistics."""
    try:
        if not ckpt.get("format"):
            if ckpt.get("mi"):
                _check_mi(ckpt["mi"], model)
            return
        _check_fields(ckpt, model)
    except _Bad as bad:
        raise CheckpointError(f"{path}: a damaged checkpoint ({bad}); use an earlier checkpoint, "
                              "retrain, or pick another tag") from None


def _check_fields(ckpt: dict, model: nn.Module) -> None:
    if ckpt.get("method") not in ("sym", "elbo"):
        raise _Bad(f"method {ckpt.get('method')!r} is neither 'sym' nor 'elbo'")
    if "elapsed" in ckpt:
        _real("elapsed", ckpt["elapsed"], low=0.0)
    args = ckpt.get("args", {})
    _kind("args", args, dict)
    if "bs" in args:
        _count("args.bs", args["bs"], low=1)
    if "stepsize" in args:
        _real("args.stepsize", args["stepsize"], low=0.0)
    _check_means(ckpt["means"])
    _check_mi(ckpt.get("mi", {}), model)
    _check_sampler(ckpt["sampler"])
    _check_chain(ckpt.get("chain"), model)
    _check_rng(ckpt["rng"])
    _check_optimizers(ckpt["optimizers"], ckpt["method"], model)


def _kind(name: str, value: object, kind: type | tuple[type, ...]) -> None:
    if not isinstance(value, kind):
        raise _Bad(f"{name} is a {type(value).__name__}")


def _count(name: str, value: object, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _Bad(f"{name} {value!r} is not a whole number of at least {low}")


def _real(name: str, value: object, low: float | None = None, high: float | None = None,
          open_low: bool = False) -> None:
    """A finite number within [low, high] (or above `low` when `open_low`)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_complex:
        value = value.item()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _Bad(f"{name} {value!r} is not a finite number")
    if low is not None and (value <= low if open_low else value < low) or \
            high is not None and value > high:
        raise _Bad(f"{name} {value!r} is out of range")


def _tensor(name: str, value: object, shape: tuple[int, ...] | None = None,
            low: float | None = None, high: float | None = None) -> torch.Tensor:
    """A finite floating-point tensor of `shape`, its values within [low, high]."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise _Bad(f"{name} is not a floating-point tensor ({type(value).__name__}"
                   f"{', ' + str(value.dtype) if isinstance(value, torch.Tensor) else ''})")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise _Bad(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if not bool(value.isfinite().all()):
        raise _Bad(f"{name} holds NaN or infinite values")
    if value.numel() and low is not None and float(value.min()) < low:
        raise _Bad(f"{name} holds values below {low:g}")
    if value.numel() and high is not None and float(value.max()) > high:
        raise _Bad(f"{name} holds values above {high:g}")
    return value


def _check_means(means: object) -> None:
    _kind("means", means, dict)
    _count("means.count", means.get("count"))
    values = means.get("values")
    _kind("means.values", values, dict)
    for name, value in values.items():
        _kind("a means.values name", name, str)
        _tensor(f"means.values.{name}", value, shape=())


def _check_mi(mi: object, model: nn.Module) -> None:
    _kind("mi", mi, dict)
    groups = getattr(model, "mi_names", ())
    for group, stats in mi.items():
        if group not in groups:
            raise _Bad(f"mi has a group {group!r}; this model's are {list(groups)}")
        _kind(f"mi.{group}", stats, dict)
        bits = model.nz0 if group.endswith("0") else model.nz1
        m, value = stats.get("m"), stats.get("mi")
        if m is None and value is None:  # saved before the first update
            continue
        _tensor(f"mi.{group}.m", m, shape=(bits,), low=0.0, high=1.0)
        _tensor(f"mi.{group}.mi", value, shape=(bits,))


def _check_sampler(sampler: object) -> None:
    _kind("sampler", sampler, dict)
    if "count" in sampler:
        _count("sampler.count", sampler["count"])
    else:  # files written before "count"
        _count("sampler.since_shuffle", sampler.get("since_shuffle"), low=1)
    perm = sampler.get("perm")
    if perm is None:
        return
    if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.is_floating_point() \
            or perm.is_complex() or perm.dtype == torch.bool:
        raise _Bad("sampler.perm is not a list of image indices")
    if not torch.equal(perm.sort().values.long(), torch.arange(len(perm))):
        raise _Bad(f"sampler.perm is not an order of the {len(perm)} images")


def _check_chain(chain: object, model: nn.Module) -> None:
    if chain is None:
        return
    from symvae.model.nets import IMAGE_SHAPE
    # any finite value: Gaussian pixels (Fashion-MNIST) are not clamped in the chain
    _tensor("its image-grid chain", chain, shape=(GRID_CHAIN, *IMAGE_SHAPE))


def _check_rng(rng: object) -> None:
    _kind("rng", rng, dict)
    state = rng.get("torch")
    try:
        torch.Generator().set_state(state)
    except (TypeError, RuntimeError, ValueError):
        raise _Bad("rng.torch is not a random-generator state") from None
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(
            isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.dim() == 1
            for s in cuda):
        raise _Bad("rng.cuda is not a list of random-generator states")
    try:
        name, keys, *rest = rng["numpy"]
        if not isinstance(keys, torch.Tensor) or keys.shape != (NUMPY_KEYS,) or \
                keys.is_floating_point() or int(keys.min()) < 0 or int(keys.max()) >= 1 << 32:
            raise ValueError("keys")
        np.random.RandomState().set_state((name, keys.numpy().astype(np.uint32), *rest))
    except (KeyError, TypeError, ValueError):
        raise _Bad("rng.numpy is not a NumPy random state") from None
    try:
        random.Random().setstate(_to_tuples(rng["python"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise _Bad("rng.python is not a Python random state") from None


# Adam's hyper-parameters: what each must be (unknown keys of other torch versions pass)
_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
_OPTIONAL_FLAGS = ("foreach", "fused")


def _check_optimizers(saved: object, method: str, model: nn.Module) -> None:
    """Each Adam's groups and per-parameter state against the optimisers a run of `method`
    builds for `model` (their parameters, in order, give the shapes)."""
    from symvae.learn.rules import LEARNERS
    fresh = LEARNERS[method](model, 1e-4, guard=False).optimizers
    if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
        raise _Bad(f"optimizers is not a list of {len(fresh)} optimiser states for {method}")
    for k, (state, opt) in enumerate(zip(saved, fresh)):
        name = f"optimizers[{k}]"
        _kind(name, state, dict)
        groups, own = state.get("param_groups"), opt.state_dict()["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(own):
            raise _Bad(f"{name}.param_groups is not a list of {len(own)} groups")
        shapes = {}
        for g, (group, mine) in enumerate(zip(groups, own)):
            _check_group(f"{name}.param_groups[{g}]", group, mine)
            shapes.update(zip(mine["params"], (tuple(p.shape) for p in
                                               opt.param_groups[g]["params"])))
        amsgrad = any(group.get("amsgrad") for group in groups)
        per_param = state.get("state")
        _kind(f"{name}.state", per_param, dict)
        for index, entry in per_param.items():
            if index not in shapes:
                raise _Bad(f"{name}.state has an entry {index!r} for no parameter")
            _check_adam_state(f"{name}.state[{index}]", entry, shapes[index], amsgrad)


def _check_group(name: str, group: object, mine: dict) -> None:
    _kind(name, group, dict)
    if group.get("params") != mine["params"]:
        raise _Bad(f"{name}.params is not this model's parameter list")
    _real(f"{name}.lr", group.get("lr"), low=0.0, open_low=True)
    betas = group.get("betas")
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise _Bad(f"{name}.betas {betas!r} is not a pair")
    for b in betas:
        _real(f"{name}.betas", b, low=0.0, high=1.0)
        if b == 1.0:
            raise _Bad(f"{name}.betas {betas!r} must be below 1")
    _real(f"{name}.eps", group.get("eps"), low=0.0, open_low=True)
    _real(f"{name}.weight_decay", group.get("weight_decay"), low=0.0)
    for flag in _FLAGS:
        if flag in group and not isinstance(group[flag], bool):
            raise _Bad(f"{name}.{flag} {group[flag]!r} is not true or false")
    for flag in _OPTIONAL_FLAGS:
        if group.get(flag) is not None and not isinstance(group[flag], bool):
            raise _Bad(f"{name}.{flag} {group[flag]!r} is not true, false or None")


def _check_adam_state(name: str, entry: object, shape: tuple[int, ...], amsgrad: bool) -> None:
    _kind(name, entry, dict)
    keys = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
    if set(entry) != keys:
        raise _Bad(f"{name} holds {sorted(entry)}, expected {sorted(keys)}")
    step = entry["step"]
    if isinstance(step, torch.Tensor) and step.dim() != 0:
        raise _Bad(f"{name}.step has shape {tuple(step.shape)}, expected a number")
    _real(f"{name}.step", step, low=0.0)
    _tensor(f"{name}.exp_avg", entry["exp_avg"], shape=shape)
    for key in ("exp_avg_sq", "max_exp_avg_sq"):
        if key in entry:
            _tensor(f"{name}.{key}", entry[key], shape=shape, low=0.0)
