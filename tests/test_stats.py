"""Running statistics: the log's averages and the per-bit mutual information."""
from __future__ import annotations

import math

import torch

from symvae.distributions import binary_entropy
from symvae.stats import BitMI, RunningMeans


def test_running_means_are_exact_means_then_a_fixed_weight():
    means = RunningMeans()
    for i in range(1000):
        means.update({"a": torch.tensor(float(i))})
    assert abs(means.read()["a"] - 499.5) < 1e-3  # weight 1/(count+1): the plain mean
    means.update({"a": torch.tensor(1499.5)})
    assert abs(means.read()["a"] - (499.5 + 0.001 * 1000)) < 1e-3  # then weight 0.001


def test_running_means_state_round_trip():
    a = RunningMeans()
    a.update({"x": torch.tensor(2.0)})
    b = RunningMeans()
    b.load_state_dict(a.state_dict())
    a.update({"x": torch.tensor(4.0)})
    b.update({"x": torch.tensor(4.0)})
    assert a.read() == b.read() == {"x": 3.0}


def test_bit_mi_by_hand():
    mi = BitMI()
    logits = torch.tensor([[10.0, 0.0], [-10.0, 0.0]])  # bit 0 decided by its input, bit 1 not
    value = mi.update(logits)
    prob = torch.sigmoid(logits)
    expected = binary_entropy(prob.mean(0)) - binary_entropy(prob).mean(0)
    assert torch.allclose(mi.mi, expected)
    assert abs(mi.mi[0].item() - math.log(2)) < 1e-3 and abs(mi.mi[1].item()) < 1e-6
    assert torch.isclose(value, expected.mean())
    assert mi.sorted_values() == sorted(expected.tolist(), reverse=True)
    mi.update(torch.zeros(2, 2))  # then exponential averages with decay 0.99
    assert torch.allclose(mi.m, 0.99 * prob.mean(0) + 0.01 * 0.5)
