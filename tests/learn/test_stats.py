"""Running statistics: the log's averages and the per-bit mutual information."""
from __future__ import annotations

import math

import torch

from symvae.learn.stats import BitMI, RunningMeans
from symvae.model.distributions import binary_entropy


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


def test_bit_mi_starts_at_one_half_and_zero_then_averages_m_first():
    mi = BitMI(2)
    assert mi.m.tolist() == [0.5, 0.5] and mi.mi.tolist() == [0.0, 0.0]
    logits = torch.tensor([[10.0, 0.0], [-10.0, 0.0]])  # bit 0 decided by its input, bit 1 not
    prob = torch.sigmoid(logits)
    m, avg = torch.full((2,), 0.5), torch.zeros(2)
    for _ in range(3):
        mi.update(logits)
        m = 0.99 * m + 0.01 * prob.mean(0)  # the marginal first ...
        avg = 0.99 * avg + 0.01 * (binary_entropy(m) - binary_entropy(prob).mean(0))  # ... then MI
        torch.testing.assert_close(mi.m, m)
        torch.testing.assert_close(mi.mi, avg)
    assert mi.mi[0] > 0.02 and abs(mi.mi[1].item()) < 1e-6
    torch.testing.assert_close(mi.mean(), avg.mean())


def test_bit_mi_approaches_log_2_for_a_decided_bit():
    mi = BitMI(1)
    logits = torch.tensor([[20.0], [-20.0]])
    for _ in range(2000):
        mi.update(logits)
    assert abs(mi.mi.item() - math.log(2)) < 1e-3


def test_bit_mi_files_are_sorted_ascending():
    mi = BitMI(3)
    mi.update(torch.tensor([[0.0, 9.0, 3.0], [0.0, -9.0, -3.0]]))
    values = mi.sorted_values()
    assert values == sorted(values) and values[0] < values[1] < values[2]
    assert values == sorted(mi.mi.tolist())


def test_bit_mi_state_round_trip_and_files_saved_before_any_update():
    a = BitMI(2)
    a.update(torch.tensor([[3.0, -1.0]]))
    b = BitMI(2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mi, b.mi) and torch.equal(a.m, b.m)
    c = BitMI(2)
    c.load_state_dict({"m": None, "mi": None})
    assert c.m.tolist() == [0.5, 0.5]
