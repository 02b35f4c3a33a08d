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

from symvae.model import HVAE, Logs


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


class SymmetricLearner:
    """Two Adams, one per player."""

    method = "sym"

    def __init__(self, model: HVAE, stepsize: float, guard: bool = True):
        self.model, self.guard = model, guard
        self.opt_p = torch.optim.Adam(model.p_parameters(), lr=stepsize)
        self.opt_q = torch.optim.Adam(model.q_parameters(), lr=stepsize)
        self.optimizers = [self.opt_p, self.opt_q]

    def step(self, x: Tensor) -> tuple[Logs, Logs]:
        """One iteration on a (noisy) data batch; returns (log terms, logits for statistics).

        With `guard`, a non-finite term raises NonFinite before its optimiser step.
        """
        model = self.model
        with torch.no_grad():
            z_q, q_logits = model.sample_q(x)
        p_loss, p_logs = model.nll_p(z_q, x)
        if self.guard:
            check_finite(p_logs)
        self.opt_p.zero_grad(set_to_none=True)
        p_loss.backward()
        self.opt_p.step()

        with torch.no_grad():
            z_p, x_p, p_logits = model.sample_p(len(x))
        q_loss, q_logs = model.nll_q(z_p, x_p)
        if self.guard:
            check_finite(q_logs)
        self.opt_q.zero_grad(set_to_none=True)
        q_loss.backward()
        self.opt_q.step()
        return {**p_logs, **q_logs}, {**p_logits, **q_logits}


class ElboLearner:
    """One Adam over all parameters on the negative ELBO."""

    method = "elbo"

    def __init__(self, model: HVAE, stepsize: float, guard: bool = True):
        self.model, self.guard = model, guard
        self.opt = torch.optim.Adam(model.parameters(), lr=stepsize)
        self.optimizers = [self.opt]

    def step(self, x: Tensor) -> tuple[Logs, Logs]:
        loss, logs, stat_logits = self.model.elbo_loss(x)
        if self.guard:
            check_finite(logs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return logs, stat_logits


LEARNERS = {"sym": SymmetricLearner, "elbo": ElboLearner}
