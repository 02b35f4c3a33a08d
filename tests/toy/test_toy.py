"""The equilibrium checked exactly: the evaluation on hand-built cases, then learning on the toy."""
from __future__ import annotations

import math

import pytest
import torch

from symvae.toy.exact import (
    all_bits,
    chain_matrix,
    joints,
    kl,
    spectral_gap,
    stationary,
    tv,
)
from symvae.toy.problem import ENCODERS, ToyData
from symvae.toy.train import main, train_toy

# A data law without the merged-prototype local equilibria of the default one (docs/toy.md).
TWO_PROTOTYPES = ToyData(("11110000", "00111111"), (0.5, 0.5), 0.05)


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- the evaluation on hand-built cases -------------------------------------------------------
def test_identical_joints_give_zero():
    torch.manual_seed(0)
    joint = torch.rand(8, 16, dtype=torch.float64) + 0.01
    joint /= joint.sum()
    assert tv(joint, joint) == 0.0
    assert kl(joint, joint) == pytest.approx(0.0, abs=1e-15)
    pi = joint.sum(0)
    t = chain_matrix(joint, joint)  # p = q: one chain step started in pi stays in pi
    assert torch.allclose(pi @ t, pi, atol=1e-14)
    assert torch.allclose(stationary(t), pi, atol=1e-12)


def test_known_pair_gives_known_tv_and_kls():
    a, b = f64(0.5, 0.5), f64(0.25, 0.75)
    assert tv(a, b) == pytest.approx(0.25)
    assert kl(a, b) == pytest.approx(0.5 * math.log(4 / 3))
    assert kl(b, a) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert kl(f64(0.0, 1.0), a) == pytest.approx(math.log(2.0))  # 0 log 0 = 0
    assert kl(a, f64(0.0, 1.0)) == math.inf


def test_two_state_chain_has_known_stationary_law_and_gap():
    # T = [[1-a, a], [b, 1-b]]: stationary (b, a)/(a+b); eigenvalues 1 and 1-a-b.
    a, b = 0.1, 0.3
    t = f64(1 - a, a, b, 1 - b).view(2, 2)
    assert torch.allclose(stationary(t), f64(0.75, 0.25), atol=1e-15)
    assert spectral_gap(t) == pytest.approx(a + b)


def test_chain_matrix_of_known_joints():
    # Two z states, two x states; q(z|x=0) = (0.8, 0.2) and p(x|z=0) = (0.8, 0.2).
    joint = f64(0.4, 0.1, 0.1, 0.4).view(2, 2)
    expected = f64(0.68, 0.32, 0.32, 0.68).view(2, 2)
    assert torch.allclose(chain_matrix(joint, joint), expected, atol=1e-15)
    # A decoder that ignores z: every step draws x' from p(x) = (0.9, 0.1) whatever x was.
    p = f64(0.45, 0.05, 0.45, 0.05).view(2, 2)
    assert torch.allclose(stationary(chain_matrix(p, joint)), f64(0.9, 0.1), atol=1e-15)


def test_all_bits_enumerates_in_binary_order():
    assert all_bits(3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1],
                                    [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]


def test_data_law_is_a_normalised_mixture():
    data = ToyData(("11", "00"), (0.75, 0.25), 0.1)
    # pi(00) = 0.75 * 0.1^2 + 0.25 * 0.9^2; pi(01) = pi(10) = 0.9 * 0.1; pi(11) = 0.75 * 0.9^2 + ...
    assert torch.allclose(data.pi, f64(0.21, 0.09, 0.09, 0.61), atol=1e-15)


# --- the enumeration agrees with the model's own samplers -------------------------------------
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_joints_match_the_samplers_used_in_learning(encoder):
    """Frequencies of sample_p and of x ~ pi, z ~ sample_q match the enumerated P and Q.

    64 cells and 40,000 samples put the sampling TV near 0.015 (seed-fixed here).
    """
    torch.manual_seed(1)
    data = ToyData(("110", "011"), (0.6, 0.4), 0.1)
    model = ENCODERS[encoder](nx=3, nz0=1, nz1=2, width=8)
    p, q = joints(model, data.pi)
    assert p.sum().item() == pytest.approx(1.0)
    assert q.sum().item() == pytest.approx(1.0)
    assert torch.allclose(q.sum(0), data.pi, atol=1e-12)

    n, weights = 40_000, 2 ** torch.arange(5, -1, -1)  # cell index of (z0, z1, x) bits

    def frequencies(z: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        cells = (torch.cat([z[0], z[1], x], 1).long() * weights).sum(1)
        return torch.bincount(cells, minlength=64).double().view(8, 8) / n

    with torch.no_grad():
        z, x, _ = model.sample_p(n)
        assert tv(frequencies(z, x), p) < 0.05
        x = data.sample(n)
        z, _ = model.sample_q(x)
        assert tv(frequencies(z, x), q) < 0.05


# --- learning reaches the equilibrium ---------------------------------------------------------
@pytest.fixture
def one_thread():
    """Width-32 layers run fastest on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_symmetric_learning_makes_the_joints_agree(encoder, one_thread):
    """800 iterations of the library's SymmetricLearner (about 15 s on 2 busy cores).

    Observed over seeds 0-7 with these settings: TV of the joints 0.011-0.029 (ladder) and
    0.014-0.020 (reverse), from about 0.8 at the start; KL(q pi || p) up to 0.018,
    TV(p(x), pi) up to 0.014; TV of the stationary law 0.008-0.104 (it is sensitive: the
    chain rarely crosses between the two prototypes). Limits: the worst seed times 1.7-2.
    """
    torch.manual_seed(0)
    model = ENCODERS[encoder]()
    history = train_toy(model, "sym", TWO_PROTOTYPES, iterations=800, bs=128,
                        stepsize=5e-3, every=800)
    start, end = history[0][1], history[-1][1]
    assert start["tv_joint"] > 0.5
    assert end["tv_joint"] < 0.05
    assert end["kl_qp"] < 0.04 and end["kl_pq"] < 0.04
    assert end["tv_marginal"] < 0.03
    assert end["tv_stationary"] < 0.2


# --- the command line -------------------------------------------------------------------------
def test_command_prints_figures_and_writes_the_plot(tmp_path, capsys, one_thread):
    plot = tmp_path / "toy.png"
    assert main(["--encoder", "reverse", "--iterations", "3", "--every", "1", "--bs", "8",
                 "--prototypes", "1100", "0011", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "reverse sym 0 3 " in out and "reverse elbo 0 3 " in out
    assert plot.stat().st_size > 0


@pytest.mark.parametrize("args, flag", [
    (["--prototypes", "10", "012"], "--prototypes"),
    (["--prototypes", "10", "01", "--weights", "1"], "--weights"),
    (["--iterations", "0"], "--iterations"),
    (["--flip", "0.7"], "--flip"),
])
def test_bad_flags_fail_with_one_line(args, flag, capsys):
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 2
    assert flag in capsys.readouterr().err
