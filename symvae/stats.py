"""Running statistics kept as device tensors: log averages and per-bit mutual information."""
from __future__ import annotations

import torch
from torch import Tensor

from symvae.distributions import binary_entropy

EXACT_AVERAGE_STEPS = 1000  # weight 1/(count+1) up to here, then a fixed weight
LATE_WEIGHT = 0.001
MI_DECAY = 0.99


class RunningMeans:
    """Running averages of the logged values (SPEC §5), never synchronised with the host."""

    def __init__(self) -> None:
        self.values: dict[str, Tensor] = {}
        self.count = 0

    def update(self, logs: dict[str, Tensor]) -> None:
        w = 1.0 / (self.count + 1) if self.count < EXACT_AVERAGE_STEPS else LATE_WEIGHT
        for name, value in logs.items():
            value = value.detach().float()
            old = self.values.get(name)
            self.values[name] = value.clone() if old is None else torch.lerp(old, value, w)
        self.count += 1

    def read(self) -> dict[str, float]:
        """The current averages as floats (one host synchronisation)."""
        if not self.values:
            return {}
        names = list(self.values)
        return dict(zip(names, torch.stack([self.values[n] for n in names]).tolist()))

    def state_dict(self) -> dict:
        return {"count": self.count, "values": dict(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.values = dict(state["values"])


class BitMI:
    """Per-bit mutual information between a bit and what it is conditioned on.

    For each bit, exponential averages (decay 0.99) of the marginal probability
    m and of MI = H(m) - mean over the batch of H(conditional probability).
    """

    def __init__(self) -> None:
        self.m: Tensor | None = None
        self.mi: Tensor | None = None

    def update(self, logits: Tensor) -> Tensor:
        """Fold in one batch of conditional logits [B, bits]; returns the mean MI per bit."""
        prob = torch.sigmoid(logits.detach().float())
        m_batch = prob.mean(0)
        self.m = m_batch if self.m is None else torch.lerp(self.m, m_batch, 1 - MI_DECAY)
        mi_batch = binary_entropy(self.m) - binary_entropy(prob).mean(0)
        self.mi = mi_batch if self.mi is None else torch.lerp(self.mi, mi_batch, 1 - MI_DECAY)
        return self.mi.mean()

    def sorted_values(self) -> list[float]:
        return [] if self.mi is None else sorted(self.mi.tolist(), reverse=True)

    def state_dict(self) -> dict:
        return {"m": self.m, "mi": self.mi}

    def load_state_dict(self, state: dict) -> None:
        self.m, self.mi = state["m"], state["mi"]
