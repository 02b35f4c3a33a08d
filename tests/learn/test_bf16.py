"""The opt-in bf16 autocast of CPU training (--bf16): what it changes and what it leaves."""
from __future__ import annotations

import json

import pytest
import torch

from symvae import cli
from symvae.learn import runtime, train
from symvae.model.distributions import bernoulli_kl, bernoulli_nll, full
from symvae.model.ladder import LadderHVAE
from symvae.reproduce import bench

CPU = torch.device("cpu")


def batch(n: int = 16) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.6).float()


def test_full_upcasts_reduced_precision_only():
    for dtype in (torch.float32, torch.float64):
        t = torch.randn(3, dtype=dtype)
        assert full(t) is t  # the default arithmetic is untouched, fp64 checks included
    assert full(torch.randn(3).bfloat16()).dtype == torch.float32


def test_bf16_logits_give_fp32_likelihoods_and_a_kl_that_is_not_negative():
    """bf16 logits near 0 (the untrained model's) with a KL computed in bf16 come out below
    zero; the distributions compute in fp32 whatever the logits' dtype."""
    g = torch.Generator().manual_seed(0)
    q, p = (1e-3 * torch.randn(512, 30, generator=g)).bfloat16(), torch.zeros(512, 30).bfloat16()
    kl = bernoulli_kl(q, p)
    assert kl.dtype == torch.float32 and kl.sum(1).min() >= 0
    value = (torch.rand(512, 30, generator=g) > 0.5).float()
    nll = bernoulli_nll(q, value)
    assert nll.dtype == torch.float32
    assert torch.allclose(nll, bernoulli_nll(q.float(), value))


def test_off_is_a_null_context_and_the_layout_stays():
    model = LadderHVAE(4, 8)
    context = runtime.learning_precision(model, CPU, bf16=False)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    with context():
        assert not torch.is_autocast_enabled("cpu")


def test_on_runs_the_networks_in_bf16_with_channels_last_weights():
    model = LadderHVAE(4, 8)
    context = runtime.learning_precision(model, CPU, bf16=True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with context():
        assert conv(torch.rand(2, 1, 28, 28)).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_on_refuses_other_devices():
    with pytest.raises(ValueError, match="CPU training only"):
        runtime.learning_precision(LadderHVAE(4, 8), torch.device("cuda"), bf16=True)


def losses(model: LadderHVAE, x: torch.Tensor, z) -> dict[str, torch.Tensor]:
    """Both methods' losses on fixed latents: the p-step's, the q-step's and the ELBO's."""
    p_loss, p_logs = model.nll_p(z, x)
    q_loss, q_logs = model.nll_q(z, x)
    elbo, elbo_logs, _ = model.elbo_loss(x, latents=z)
    return {"p": p_loss, "q": q_loss, "elbo": elbo, **p_logs, **q_logs, **elbo_logs}


@pytest.mark.parametrize("loss", ["p", "q", "elbo"])
def test_bf16_losses_and_gradients_agree_with_fp32(loss):
    """Same weights, batch and latents: every figure within bf16's rounding of fp32's, and the
    gradient of each loss pointing the same way (cosine > 0.99); all figures fp32, the KL
    terms not negative. (A learning step itself is not compared: Adam's first step moves each
    weight by +-step size whatever the gradient's size, so rounding flips the tiny ones.)"""
    x = batch(64)
    torch.manual_seed(0)
    model = LadderHVAE(4, 8)
    with torch.no_grad():
        z, _ = model.sample_q(x)
    grads, figures = [], []
    for bf16 in (False, True):
        context = runtime.learning_precision(model, CPU, bf16)
        model.zero_grad()
        with context():
            out = losses(model, x, z)
        out[loss].backward()
        assert all(v.dtype == torch.float32 for v in out.values())
        figures.append({k: float(v.detach()) for k, v in out.items()})
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    for name, value in figures[0].items():
        assert figures[1][name] == pytest.approx(value, rel=0.01, abs=1e-3), name
    assert figures[1]["kl0loss"] >= 0 and figures[1]["kl1loss"] >= 0
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.99


def test_training_refuses_bf16_off_the_cpu(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    def cuda_here(name, flag="--device"):  # as on a machine with a GPU
        return torch.device("cuda")
    monkeypatch.setattr(cli, "pick_device", cuda_here)
    monkeypatch.setattr(train, "pick_device", cuda_here)
    with pytest.raises(SystemExit) as refused:
        train.main(LadderHVAE, "sym", ["--bf16", "--device", "cuda", "--niterations", "1"])
    assert refused.value.code == 2
    assert "--bf16: bf16 autocast is offered for CPU training only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_bench_times_bf16_beside_fp32(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--experiments", "mnist-ladder", "--methods", "elbo", "--bs", "4", "--iters",
                "1", "--warmup", "0", "--device", "cpu", "--bf16", "both", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["bf16"] for r in rows] == [False, True]
    assert "| mnist-ladder | elbo | eager, bf16 |" in capsys.readouterr().out
