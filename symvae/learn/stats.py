"""Running statistics kept as device tensors: log averages and per-bit mutual information."""
from __future__ import annotations

import torch
from torch import Tensor

from symvae.model.distributions import binary_entropy

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
    """Per-bit mutual information between a bit and what it is conditioned on (SPEC §5).

    For each bit, exponential averages (decay 0.99) of the marginal probability
    m and of MI = H(m) - mean over the batch of H(conditional probability),
    starting from m = 1/2 and MI = 0; m is updated first, MI then uses the new m.
    """

    def __init__(self, bits: int, device: torch.device | str = "cpu") -> None:
        # float32 whatever the default dtype, as the logits are folded in (update)
        self.m = torch.full((bits,), 0.5, dtype=torch.float32, device=device)
        self.mi = torch.zeros(bits, dtype=torch.float32, device=device)

    def update(self, logits: Tensor) -> None:
        """Fold in one batch of conditional logits [B, bits]."""
        prob = torch.sigmoid(logits.detach().float())
        self.m = torch.lerp(self.m, prob.mean(0), 1 - MI_DECAY)
        mi_batch = binary_entropy(self.m) - binary_entropy(prob).mean(0)
        self.mi = torch.lerp(self.mi, mi_batch, 1 - MI_DECAY)

    def mean(self) -> Tensor:
        """The mean over the bits of the per-bit averages (the log's pmi1, qmi0, qmi1)."""
        return self.mi.mean()

    def sorted_values(self) -> list[float]:
        """The per-bit MI estimates in ascending order (the logs/stat*-TAG.txt files)."""
        return sorted(self.mi.tolist())

    def state_dict(self) -> dict:
        return {"m": self.m, "mi": self.mi}

    def load_state_dict(self, state: dict) -> None:
        if state.get("m") is not None:  # None: saved before the first update
            self.m, self.mi = state["m"], state["mi"]


def bit_trackers(groups: tuple[str, ...], nz0: int, nz1: int,
                 device: torch.device | str = "cpu") -> dict[str, BitMI]:
    """One fresh BitMI per bit group ('p1', 'q0', 'q1': the digit names the latent layer)."""
    return {g: BitMI(nz0 if g.endswith("0") else nz1, device) for g in groups}
