"""Running the authors' code (their hvae.py and main_elbo.py, imported unmodified) on given
weights and inputs, and the helpers both sides of symvae.authors.crosscheck share.

`figures_of_authors` computes every quantity the crosscheck compares, keyed as
symvae.authors.crosscheck.figures_of_ours keys ours; scripts/make_golden.py stores its output.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from symvae.learn.authors_format import from_authors, name_map, order
from symvae.model.nets import PIXELS

STEP = 1e-4  # the authors' HVAE wants a step size for its optimisers; no step is taken
LOG_SIGMA = -0.5  # Fashion: set after seeding (the seed leaves 0, where sigma's factor hides)
MI_SEEDS = (101, 102)  # seeds of the draws inside one MI update (p, then q)
Figures = dict[str, Tensor]


def import_authors(ref: Path, experiment: str) -> tuple[ModuleType, ModuleType]:
    """Their hvae.py and main_elbo.py (for ZGR_binary and kl) of one experiment folder."""
    folder = (Path(ref) / experiment).resolve()
    if not (folder / "hvae.py").is_file():
        raise FileNotFoundError(f"{folder}: no hvae.py; --ref must be a checkout of the "
                                "authors' repository")
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        modules = []
        for name in ("hvae", "main_elbo"):
            spec = importlib.util.spec_from_file_location(
                f"authors_{experiment.replace('-', '_')}_{name}", folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules.append(module)
    finally:
        sys.path.remove(str(folder))
        for added in set(sys.modules) - before:  # their plain-named helpers, mnist, hvae
            if str(getattr(sys.modules[added], "__file__", "") or "").startswith(str(folder)):
                del sys.modules[added]
    return modules[0], modules[1]


def authors_model(hvae: ModuleType, experiment: str, nz0: int, nz1: int,
                  state: dict | None = None) -> torch.nn.Module:
    """Their HVAE (the ladder one takes a device); with `state` loaded when given, in its dtype."""
    extra = () if order(experiment) == "reverse" else ("cpu",)
    model = hvae.HVAE(nz0, nz1, STEP, *extra)
    if state is not None:
        model.to(next(iter(state.values())).dtype).load_state_dict(state)
    return model


def seeded_authors_model(hvae: ModuleType, experiment: str, nz0: int, nz1: int, seed: int
                         ) -> torch.nn.Module:
    """Their HVAE as torch.manual_seed(seed) creates it, Fashion's log sigma set to LOG_SIGMA."""
    torch.manual_seed(seed)
    model = authors_model(hvae, experiment, nz0, nz1)
    if hasattr(model, "lsigma"):
        with torch.no_grad():
            model.lsigma.fill_(LOG_SIGMA)
    return model


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # their MNIST nets also return a sample


def float32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of `state` in float32 (the dtype of the MI statistics in both codes)."""
    return {k: v.float() for k, v in state.items()}


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def grad_norms(model: torch.nn.Module, rename: dict[str, str] | None = None) -> Figures:
    """The norm of each parameter's gradient, by (renamed) parameter name; those without none."""
    names = rename or {}
    return {names.get(n, n): p.grad.norm() for n, p in model.named_parameters()
            if p.grad is not None}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Tensors both codes create on the fly (p(z0)'s zeros and halves) in the inputs' dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def figures_of_authors(hvae: ModuleType, elbo: ModuleType, experiment: str, state: dict,
                       inputs: Figures) -> dict[str, Figures]:
    """Every compared quantity computed by the authors' code, keyed as `figures_of_ours`."""
    with default_dtype(inputs["x"].dtype):
        return _figures_of_authors(hvae, elbo, experiment, state, inputs)


def _figures_of_authors(hvae: ModuleType, elbo: ModuleType, experiment: str, state: dict,
                        inputs: Figures) -> dict[str, Figures]:
    nz0, nz1 = inputs["z0"].shape[1], inputs["z1"].shape[1]
    x, z0, z1, bs = inputs["x"], inputs["z0"], inputs["z1"], len(inputs["x"])
    ours = {theirs: mine for mine, theirs in name_map(experiment).items()}
    m = authors_model(hvae, experiment, nz0, nz1, state)
    crit, gauss = m.criterion, experiment.startswith("fmnist")
    out: dict[str, Figures] = {}
    with torch.no_grad():
        if order(experiment) == "ladder":
            a0, a1 = m.rnet(x)
            prior1 = m.fnet01(z0)[0]
            out["sampler"] = {"a0": a0, "a1": a1, "q(z1|z0,x)": m.fnet01(z0, s1=a1)[0],
                              "p(z1|z0)": prior1, "p(x|z1)": _first(m.fnet1x(z1))}
            nll = {"-log q(z0|x)": crit(m.fnet0(bs, s0=a0)[0], z0).sum(1),
                   "-log q(z1|z0,x)": crit(prior1 + a1, z1).sum(1)}
        else:
            prior1 = m.pnet01(z0)
            out["sampler"] = {"q(z1|x)": m.qnetx1(x), "q(z0|z1)": m.qnet10(z1),
                              "p(z1|z0)": prior1, "p(x|z1)": m.pnet1x(z1)}
            nll = {"-log q(z1|x)": crit(m.qnetx1(x), z1).sum(1),
                   "-log q(z0|z1)": crit(m.qnet10(z1), z0).sum(1)}
        nll["-log p(z1|z0)"] = crit(prior1, z1).sum(1)
        if gauss:
            out["sampler"]["log sigma"] = m.lsigma.detach().clone()
        else:
            nll["-log p(x|z1)"] = crit(out["sampler"]["p(x|z1)"], x).sum([1, 2, 3])
        out["nll"] = nll

    names = ("ploss1", "plossx") if order(experiment) == "ladder" else ("ploss",)
    mp = authors_model(hvae, experiment, nz0, nz1, state)
    logs = dict(zip(names, _as_tuple(mp.optimize_p(z0, z1, x))))
    out["grad p-step"] = grad_norms(mp, ours)
    names = ("qloss0", "qloss1") if order(experiment) == "ladder" else ("qloss",)
    mq = authors_model(hvae, experiment, nz0, nz1, state)
    logs.update(zip(names, _as_tuple(mq.optimize_q(inputs["z0q"], inputs["z1q"], inputs["xq"]))))
    out["grad q-step"] = grad_norms(mq, ours)
    out["sym logs"] = logs

    me = authors_model(hvae, experiment, nz0, nz1, state)
    loss, out["elbo logs"] = authors_elbo(me, elbo, experiment, inputs)
    loss.backward()
    out["grad elbo"] = grad_norms(me, ours)
    out["elbo loss"] = {"loss": loss.detach()}

    if order(experiment) == "ladder":
        with default_dtype(torch.float32):  # the statistics are float32 in both codes
            ms = authors_model(hvae, experiment, nz0, nz1, float32(state))
            torch.manual_seed(MI_SEEDS[0])
            ms.update_stats_p(bs)
            torch.manual_seed(MI_SEEDS[1])
            ms.update_stats_q(x.float())
        _, mi = from_authors(ms.state_dict(), experiment)
        out["mi"] = {f"{g}.{k}": v for g, s in mi.items() for k, v in s.items()}
    return out


AUTHORS_LOG_2 = 0.6931  # their rounded log 2 in mnist-reverse/main_elbo.py
AUTHORS_HALF_LOG_2PI = 0.91894  # their rounded 0.5*log(2*pi), fmnist-ladder


def authors_elbo(m, elbo: ModuleType, experiment: str, inputs: Figures
                 ) -> tuple[Tensor, Figures]:
    """Their ELBO iteration (main_elbo.py's loop body), from their parts: on the fixed ZGR
    samples inputs["e0"], inputs["e1"] when given, else drawing them as their loop does."""
    x, e0, e1, crit = inputs["x"], inputs.get("e0"), inputs.get("e1"), m.criterion
    if order(experiment) == "reverse":
        s1 = m.qnetx1(x)
        z1 = elbo.ZGR_binary(s1, e1)
        s0 = m.qnet10(z1)
        z0 = elbo.ZGR_binary(s0, e0)
        nz0, nz1 = z0.shape[1], z1.shape[1]
        data = crit(m.pnet1x(z1), x).sum([1, 2, 3]).mean()
        kl = (-crit(s1, z1).sum(1).mean() - crit(s0, z0).sum(1).mean() + AUTHORS_LOG_2 * nz0
              + crit(m.pnet01(z0), z1).sum(1).mean())
        return data + kl, {"dloss": data.detach() / PIXELS, "klloss": kl.detach() / (nz0 + nz1)}
    a0, a1 = m.rnet(x)
    prior0 = m.fnet0(len(x))[0]
    z0 = elbo.ZGR_binary(prior0 + a0, e0)
    prior1 = m.fnet01(z0)[0]
    z1 = elbo.ZGR_binary(prior1 + a1, e1)
    nz0, nz1 = z0.shape[1], z1.shape[1]
    out = _first(m.fnet1x(z1))
    if experiment.startswith("fmnist"):
        per_pixel = AUTHORS_HALF_LOG_2PI + m.lsigma + (x - out).square() / (2 * m.lsigma.exp() ** 2)
        data = per_pixel.sum([1, 2, 3]).mean()
    else:
        data = crit(out, x).sum([1, 2, 3]).mean()
    kl0 = elbo.kl((prior0 + a0).sigmoid(), prior0.sigmoid()).sum(1).mean()
    kl1 = elbo.kl((prior1 + a1).sigmoid(), prior1.sigmoid()).sum(1).mean()
    logs = {"dloss": data / PIXELS, "kl0loss": kl0 / nz0, "kl1loss": kl1 / nz1}
    return data + kl0 + kl1, {k: v.detach() for k, v in logs.items()}
