"""Checkpoints of the authors' scripts <-> symvae checkpoints.

The authors save `model.state_dict()` of their HVAE: layers named after their
networks (ladder: fnet01, fnet1x, rnet; reverse: pnet01, pnet1x, qnetx1,
qnet10), the per-bit MI statistics as tensors of the model (ladder) and a
`dummy_param` (reverse). Both codes create their layers in the same order, so
the name map is read off our model: its k-th weight layer is their k-th layer
of THEIR_LAYERS. Our MI statistics (symvae.learn.stats.BitMI) travel beside the
weights as {group: {"m": tensor, "mi": tensor}}.

`adopt_bare` brings such a file to our names where a checkpoint is loaded; symvae.learn.convert
is the command that writes either format.
"""
from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from symvae.experiment import load_model_class
from symvae.ground import CheckpointError

_CONV_1_7 = tuple(f"conv{i}" for i in range(1, 8))
_TRUNK = tuple(f"conv{i}" for i in range(7))
_SKIP_MLP = ("lin1", "lin2", "lin3", "lin_skip")
# Their weight layers in the order both codes create them, per encoder order.
THEIR_LAYERS = {
    "ladder": [("fnet01", _SKIP_MLP), ("fnet1x", _CONV_1_7),
               ("rnet", _TRUNK + ("conv_z1",) + _SKIP_MLP)],
    "reverse": [("pnet01", _SKIP_MLP), ("pnet1x", _CONV_1_7), ("qnetx1", _TRUNK + ("conv_z1",)),
                ("qnet10", ("conv_z1",) + _SKIP_MLP)],
}
LOG_SIGMA = ("pixels.log_sigma", "lsigma")  # Gaussian pixels: one scalar parameter
# our MI group -> their (marginal, MI) tensors
THEIR_MI = {"p1": ("z1_p", "z1_p_mi"), "q0": ("z0_q", "z0_q_mi"), "q1": ("z1_q", "z1_q_mi")}
DUMMY = "dummy_param"  # the reverse model's device marker, zero
MI_PREFIX = "mi."


class ConvertError(CheckpointError):
    """A state dict that is not what the conversion expects, with what it has instead."""


def order(experiment: str) -> str:
    """'ladder' or 'reverse': the encoder order of an experiment."""
    return experiment.rsplit("-", 1)[-1]


@cache
def name_map(experiment: str) -> dict[str, str]:
    """Our parameter name -> the authors' name, for every parameter of the experiment's model."""
    model = load_model_class(experiment)(1, 1, width=2)  # sizes do not change the names
    layers = [name for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    theirs = [f"{net}.{layer}" for net, names in THEIR_LAYERS[order(experiment)]
              for layer in names]
    if len(layers) != len(theirs):  # the layer tables of SPEC §2 changed on one side
        raise RuntimeError(f"{experiment}: {len(layers)} weight layers, the authors' have "
                           f"{len(theirs)}")
    pairs = dict(zip(layers, theirs))
    out = {}
    for name in model.state_dict():
        layer, _, kind = name.rpartition(".")
        out[name] = LOG_SIGMA[1] if name == LOG_SIGMA[0] else f"{pairs[layer]}.{kind}"
    return out


def detect(state: dict) -> str | None:
    """The experiment of an authors' state dict, or None when the names are not theirs."""
    if "rnet.conv0.weight" in state:
        return "fmnist-ladder" if LOG_SIGMA[1] in state else "mnist-ladder"
    if "qnetx1.conv0.weight" in state:
        return "mnist-reverse"
    return None


def from_authors(state: dict[str, Tensor], experiment: str | None = None
                 ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """The authors' state dict -> (our model state dict, our MI statistics by group)."""
    found = detect(state)
    if found is None:
        raise ConvertError("not an authors' checkpoint (no rnet.* or qnetx1.* weights)")
    if experiment is not None and found != experiment:
        raise ConvertError(f"an authors' {found} checkpoint, not {experiment}; use it in the "
                           f"{found} folder")
    names = name_map(found)
    missing = sorted(set(names.values()) - set(state))
    if missing:
        raise ConvertError(f"an authors' {found} checkpoint without {', '.join(missing[:3])}")
    model = {ours: state[theirs] for ours, theirs in names.items()}
    mi = {g: {"m": state[m], "mi": state[v]} for g, (m, v) in THEIR_MI.items()
          if order(found) == "ladder"}
    extra = set(state) - set(names.values()) - {t for pair in THEIR_MI.values() for t in pair}
    if extra - {DUMMY}:
        raise ConvertError(f"an authors' {found} checkpoint with unknown entries "
                           f"{sorted(extra - {DUMMY})[:3]}")
    return model, mi


def to_authors(model: dict[str, Tensor], mi: dict[str, dict[str, Tensor | None]] | None,
               experiment: str) -> dict[str, Tensor]:
    """(our model state dict, our MI statistics) -> the state dict the authors' HVAE loads.

    Statistics not yet gathered (absent or None) get the authors' start m = 1/2, MI = 0.
    """
    names = name_map(experiment)
    if set(model) != set(names):
        missing = sorted(set(names) - set(model))[:3]
        raise ConvertError(f"not a {experiment} model state dict (e.g. no {missing})")
    state = {theirs: model[ours] for ours, theirs in names.items()}
    if order(experiment) == "reverse":
        state[DUMMY] = torch.zeros(())
        return state
    skip = model["p_z1.skip.weight"]  # Linear(nz0, nz1)
    bits = {"p1": skip.shape[0], "q0": skip.shape[1], "q1": skip.shape[0]}
    for group, (m_name, mi_name) in THEIR_MI.items():
        stats = (mi or {}).get(group) or {}
        m, value = stats.get("m"), stats.get("mi")
        state[m_name] = torch.full((bits[group],), 0.5) if m is None else m
        state[mi_name] = torch.zeros(bits[group]) if value is None else value
    return state


def adopt_bare(ckpt: dict, path: Path, experiment: str) -> None:
    """Bring a bare state dict (`load`'s format None) to our names, in place.

    An authors' checkpoint is converted, with a one-line note on stderr, and
    ckpt["authors"] is set; `mi.*` entries (written by `--to symvae`) move to ckpt["mi"].
    """
    state = ckpt["model"]
    if detect(state) is not None:
        try:
            ckpt["model"], ckpt["mi"] = from_authors(state, experiment)
        except ConvertError as err:
            raise CheckpointError(f"{path}: {err}") from None
        ckpt["authors"] = True
        print(f"note: {path}: an authors' {experiment} checkpoint, converted to symvae names"
              + (" (its MI statistics carried over)" if ckpt["mi"] else ""), file=sys.stderr)
        return
    mi: dict[str, dict[str, Tensor]] = {}
    for name in [n for n in state if n.startswith(MI_PREFIX)]:
        group, kind = name[len(MI_PREFIX):].split(".", 1)
        mi.setdefault(group, {})[kind] = state.pop(name)
    if mi:
        ckpt["mi"] = mi
