"""The two learning rules of SPEC §4, written once against the model interface.

Symmetric equilibrium learning (one iteration):
  p-step: x ~ data, z ~ q(z|x);   maximise log p(z, x)  over p's parameters.
  q-step: (z, x) ~ p;             maximise log q(z | x) over q's parameters.
Samples carry no gradient. ELBO learning: one Adam over all parameters on the
negative ELBO with ZGR-sampled latents.
"""
from __future__ import annotations

import torch
from torch import Tensor

from symvae.model.hvae import HVAE, Logs


class NonFinite(FloatingPointError):
    """A loss term is NaN or infinite; raised before the optimiser step it would poison."""

    def __init__(self, term: str):
        super().__init__(term)
        self.term = term


def check_finite(logs: Logs) -> None:
    """Raise NonFinite naming the first non-finite term (one host synchronisation)."""
    values = torch.stack([v.detach().float() for v in logs.values()])
    if not bool(torch.isfinite(values).all()):
        bad = [n for n, ok in zip(logs, torch.isfinite(values).tolist()) if not ok]
        raise NonFinite(bad[0])


class Learner:
    """Adam steps on losses, each guarded against non-finite terms when `guard` is set."""

    method = ""

    def __init__(self, model: HVAE, guard: bool):
        self.model, self.guard = model, guard
        self.optimizers: list[torch.optim.Optimizer] = []

    def descend(self, opt: torch.optim.Optimizer, loss: Tensor, logs: Logs) -> None:
        """One Adam step on `loss`; with `guard`, NonFinite is raised before a poisoned step."""
        if self.guard:
            check_finite(logs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class SymmetricLearner(Learner):
    """Two Adams, one per player."""

    method = "sym"

    def __init__(self, model: HVAE, stepsize: float, guard: bool = True):
        super().__init__(model, guard)
        self.opt_p = torch.optim.Adam(model.p_parameters(), lr=stepsize)
        self.opt_q = torch.optim.Adam(model.q_parameters(), lr=stepsize)
        self.optimizers = [self.opt_p, self.opt_q]

    def step(self, x: Tensor) -> tuple[Logs, Logs]:
        """One iteration on a (noisy) data batch; returns (log terms, logits for statistics)."""
        model = self.model
        with torch.no_grad():  # p-step: complete the data by z ~ q(z|x), fit log p(z, x)
            z_q, q_logits = model.sample_q(x)
        p_loss, p_logs = model.nll_p(z_q, x)
        self.descend(self.opt_p, p_loss, p_logs)

        with torch.no_grad():  # q-step: sample (z, x) ~ p, fit log q(z|x)
            z_p, x_p, p_logits = model.sample_p(len(x))
        q_loss, q_logs = model.nll_q(z_p, x_p)
        self.descend(self.opt_q, q_loss, q_logs)
        return {**p_logs, **q_logs}, {**p_logits, **q_logits}


class ElboLearner(Learner):
    """One Adam over all parameters on the negative ELBO."""

    method = "elbo"

    def __init__(self, model: HVAE, stepsize: float, guard: bool = True):
        super().__init__(model, guard)
        self.opt = torch.optim.Adam(model.parameters(), lr=stepsize)
        self.optimizers = [self.opt]

    def step(self, x: Tensor) -> tuple[Logs, Logs]:
        """One iteration: returns (log terms, logits for statistics)."""
        loss, logs, stat_logits = self.model.elbo_loss(x)
        self.descend(self.opt, loss, logs)
        return logs, stat_logits


LEARNERS = {"sym": SymmetricLearner, "elbo": ElboLearner}
