"""KID, precision/recall and the importance-sampled log-likelihood against direct computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from symvae.cli import seed_everything
from symvae.evaluate import loglik, metrics
from symvae.experiment import load_model_class
from symvae.toy.exact import joints
from symvae.toy.problem import ToyData, ToyLadder, ToyReverse


def features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


# --- KID ----------------------------------------------------------------------------------------
def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Bińkowski et al.'s unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written out."""
    m, d = len(a), a.shape[1]
    kern = lambda u, v: (u @ v.T / d + 1) ** 3
    kaa, kbb, kab = kern(a, a), kern(b, b), kern(a, b)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
    return off(kaa) + off(kbb) - 2 * kab.mean()


def test_kid_blocks_cover_the_sets_in_at_least_ten_blocks():
    assert metrics.kid_blocks(1000) == (10, 100)
    assert metrics.kid_blocks(10_000) == (10, 1000)
    assert metrics.kid_blocks(25_000) == (25, 1000)
    assert metrics.kid_blocks(205) == (10, 20)
    with pytest.raises(ValueError, match="at least 20"):
        metrics.kid_blocks(19)


def test_kid_is_the_mean_of_disjoint_unbiased_blocks_with_their_standard_error():
    real, fake = features(230, 16, 0), features(250, 16, 1, shift=0.3)
    value, se = metrics.kid(real, fake)
    blocks, size = metrics.kid_blocks(230)
    direct = [mmd2_unbiased(real[i * size:(i + 1) * size].numpy(),
                            fake[i * size:(i + 1) * size].numpy()) for i in range(blocks)]
    assert value == pytest.approx(np.mean(direct), rel=1e-10)
    assert se == pytest.approx(np.std(direct, ddof=1) / math.sqrt(blocks), rel=1e-10)


def test_kid_near_zero_for_one_law_and_clearly_positive_for_two():
    same = metrics.kid(features(2000, 8, 2), features(2000, 8, 3))
    assert abs(same[0]) < 3 * same[1]
    apart = metrics.kid(features(2000, 8, 2), features(2000, 8, 3, shift=0.5))
    assert apart[0] > 10 * apart[1] > 0


# --- precision and recall -------------------------------------------------------------------
def pr_direct(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al.'s definitions with full distance matrices."""
    dist = lambda u, v: np.sqrt(((u[:, None] - v[None]) ** 2).sum(-1))
    r_real = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    precision = (dist(fake, real) <= r_real[None]).any(1).mean()
    recall = (dist(real, fake) <= r_fake[None]).any(1).mean()
    return float(precision), float(recall)


def test_precision_recall_match_the_direct_computation_and_torch_fidelity(monkeypatch):
    real, fake = features(300, 5, 4), features(260, 5, 5, shift=0.4)
    monkeypatch.setattr(metrics, "DIST_CHUNK", 64)  # several chunks per distance matrix
    ours = metrics.precision_recall(real, fake)
    assert ours == pytest.approx(pr_direct(real.numpy(), fake.numpy()), abs=1e-12)
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    theirs = calculate_precision_recall_full(fake, real, neighborhood=3)  # generated first
    assert ours == pytest.approx(theirs, abs=1e-6)  # its means are float32; 1/n is 3e-3
    assert 0.2 < ours[0] < 1 and 0.2 < ours[1] < 1  # a shift the balls half cover


def test_recall_shows_a_generator_that_collapsed_onto_few_modes():
    real = features(400, 4, 6)
    few = real[:5].repeat(80, 1) + 1e-3 * features(400, 4, 7)  # 5 modes, all on the data
    precision, recall = metrics.precision_recall(real, few)
    assert precision == 1.0 and recall < 0.1
    figures = metrics.set_figures(real, few)
    assert figures["metric_n"] == 400 and figures["recall"] == recall
    assert figures["kid"] > 5 * figures["kid_se"]


# --- log-likelihood -------------------------------------------------------------------------
@pytest.mark.parametrize("model_cls", [ToyLadder, ToyReverse])
def test_importance_sampling_converges_to_the_exact_log_likelihood(model_cls):
    torch.manual_seed(0)
    model = model_cls().double()
    with torch.no_grad():  # sharper conditionals than at initialisation: q far from the posterior
        for p in model.parameters():
            p.mul_(3)
    data = ToyData()
    p_joint, q_joint = joints(model, data.pi)
    index = [0, 60, 170, 255]
    log_px = p_joint.sum(0).log()[index]  # log p(x) by enumeration over every z
    q_z = q_joint[:, index] / data.pi[index]  # q(z|x)
    elbo = (q_z * (p_joint[:, index].log() - q_z.log())).sum(0)  # E_q log p(z,x)/q(z|x)
    assert (log_px - elbo > 0.05).all()  # a bound that is far from tight
    x = data.patterns[index]
    torch.manual_seed(1)
    estimate = metrics.importance_log_likelihood(model, x, k=20_000)
    torch.manual_seed(1)
    w = metrics.log_weights(model, x, 20_000)  # the same draws
    assert estimate.numpy() == pytest.approx((w.logsumexp(1) - math.log(20_000)).numpy())
    # the mean weight p(z,x)/q(z|x) is unbiased for p(x): within 4 standard errors of it
    w = w.exp()
    se = w.std(1) / math.sqrt(20_000)
    assert ((w.mean(1) - log_px.exp()).abs() < 4 * se).all()
    assert estimate.numpy() == pytest.approx(log_px.numpy(), abs=0.05)
    # K = 1: log p(z,x) - log q(z|x) at one draw, whose mean is the ELBO
    one = metrics.importance_log_likelihood(model, x.repeat(4000, 1), k=1).view(4000, 4)
    assert one.mean(0).numpy() == pytest.approx(elbo.numpy(), abs=4 * float(one.std(0).max())
                                                 / math.sqrt(4000))


def test_mean_se():
    mean, se = metrics.mean_se(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_loglik_command_records_the_estimate_over_the_last_images(experiment_copy, data_root,
                                                                  monkeypatch, capsys):
    from test_fid import save_untrained
    folder = experiment_copy("mnist-ladder")
    save_untrained(folder, "s")
    monkeypatch.chdir(folder)
    argv = ["--call_prefix", "s", "--nz0", "4", "--nz1", "8", "--k", "3", "--n", "8",
            "--bs", "3", "--seed", "5", "--device", "cpu", "--data_root", str(data_root)]
    assert loglik.main(argv) == 0
    record = json.loads((folder / "loglik_results.json").read_text())[-1]
    assert (record["label"], record["k"], record["n"]) == ("sym/s", 3, 8)
    assert f"{record['loglik']:.3f} ± {record['loglik_se']:.3f}" in capsys.readouterr().out
    # the same figure from the library, with the same draws
    model_cls = load_model_class(folder)
    model = model_cls(4, 8)
    model.load_state_dict(torch.load(folder / "models" / "m_s.pt")["model"])
    data = model_cls.dataset.load(data_root, torch.device("cpu"))
    seed_everything(5)
    values = metrics.importance_log_likelihood(model.eval(), data.as_float(data.images[-8:]), 3, 3)
    assert (record["loglik"], record["loglik_se"]) == pytest.approx(metrics.mean_se(values))
    assert loglik.main(argv) == 0  # a second record, the first kept
    assert len(json.loads((folder / "loglik_results.json").read_text())) == 2
    with pytest.raises(SystemExit) as stop:
        loglik.main([*argv, "--n", "10001"])
    assert stop.value.code == 2 and "--n 10001" in capsys.readouterr().err
