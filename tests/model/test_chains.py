"""Limiting chains as the authors run them: where each experiment starts them, how steps are
counted, what the output step writes, and the training grid's running chain."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from symvae.evaluate.export import image_chunks
from symvae.experiment import load_model_class
from symvae.learn import train
from symvae.learn.train import GRID_COLUMNS, Trainer
from symvae.model.pixels import BernoulliPixels, HalfProbabilityPixels
from symvae.model.sampling import CHAIN_STARTS, chain_start, limiting, run_chain
from symvae.reproduce.bench import synthetic_data

NZ0, NZ1 = 5, 7
EXPERIMENTS = ("mnist-ladder", "mnist-reverse", "fmnist-ladder")


def tiny(name: str):
    torch.manual_seed(0)
    return load_model_class(name)(NZ0, NZ1).eval()


def count_encoder_passes(model, monkeypatch) -> list[torch.Tensor]:
    """Record the input x of every z ~ q(z|x) the model draws."""
    inputs, sample_q = [], model.sample_q

    def recorded(x):
        inputs.append(x.clone())
        return sample_q(x)
    monkeypatch.setattr(model, "sample_q", recorded)
    return inputs


@pytest.mark.parametrize("name,grid_start,fid_start,pixels", [
    ("mnist-ladder", "binary_noise", "ancestral", BernoulliPixels),
    ("mnist-reverse", "binary_noise", "exported_shot", HalfProbabilityPixels),
    ("fmnist-ladder", "uniform_noise", "binary_noise", None)])
def test_each_experiment_starts_its_chains_where_the_authors_do(name, grid_start, fid_start,
                                                                pixels):
    cls = load_model_class(name)
    assert (cls.chain_start, cls.fid_chain_start) == (grid_start, fid_start)
    assert {grid_start, fid_start} <= set(CHAIN_STARTS)
    if pixels is not None:
        assert cls.pixel_model is pixels


def test_named_starts():
    model = tiny("mnist-ladder")
    torch.manual_seed(1)
    noise = chain_start(model, "binary_noise", 400)
    assert noise.shape == (400, 1, 28, 28) and set(noise.unique().tolist()) == {0.0, 1.0}
    assert abs(noise.mean().item() - 0.5) < 0.01
    uniform = chain_start(model, "uniform_noise", 400)
    assert 0 <= uniform.min() and uniform.max() < 1 and len(uniform.unique()) > 1000
    torch.manual_seed(2)
    x = chain_start(model, "ancestral", 6)
    torch.manual_seed(2)
    assert torch.equal(x, model.sample_p(6)[1])
    torch.manual_seed(3)
    shot = chain_start(model, "exported_shot", 6)
    torch.manual_seed(3)
    assert torch.equal(shot, (model.single_shot(6)[1] > 0).float())


def test_reverse_thresholds_probabilities_and_ladder_logits():
    logits = torch.tensor([-1.0, 1e-8, 2.0])  # float32: sigmoid(1e-8) is exactly 1/2
    assert BernoulliPixels().export(logits).tolist() == [0.0, 1.0, 1.0]
    assert HalfProbabilityPixels().export(logits).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_steps_are_sampled_steps_plus_one_output_step(steps, monkeypatch):
    model = tiny("mnist-ladder")
    inputs = count_encoder_passes(model, monkeypatch)
    start = torch.ones(4, 1, 28, 28)
    z, out = run_chain(model, start, steps)
    assert len(inputs) == steps + 1  # the authors' 1000 sampled steps + 1: 1001 passes
    assert torch.equal(inputs[0], start)
    assert all(set(x.unique().tolist()) <= {0.0, 1.0} for x in inputs)  # sampled pixels
    assert torch.equal(out, model.p_x(z[1]))  # the image is the output step's decoder output


def test_zero_steps_is_one_step_from_the_start():
    model = tiny("mnist-ladder")
    start = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    torch.manual_seed(5)
    z, out = run_chain(model, start, 0)
    torch.manual_seed(5)
    z_ref, _ = model.sample_q(start)
    assert all(torch.equal(a, b) for a, b in zip(z, z_ref))
    assert torch.equal(out, model.p_x(z_ref[1]))


@pytest.mark.parametrize("name", ["mnist-ladder", "fmnist-ladder"])
def test_generate_images_are_means_of_the_output_step_from_noise(name, monkeypatch):
    model = tiny(name)
    inputs = count_encoder_passes(model, monkeypatch)
    images = limiting(model, 5, 2)
    assert len(inputs) == 3
    first = inputs[0]
    if name == "mnist-ladder":
        assert set(first.unique().tolist()) == {0.0, 1.0}  # binary noise
        assert 0 < images.min() and images.max() < 1  # probabilities, not thresholded
    else:
        assert len(first.unique()) > 100  # uniform noise


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_fid_chunks_start_at_fid_start_and_write_the_output_step(name, monkeypatch):
    model = tiny(name)
    start = torch.full((3, 1, 28, 28), 0.25)
    monkeypatch.setitem(CHAIN_STARTS, model.fid_chain_start, lambda m, n: start[:n])
    inputs = count_encoder_passes(model, monkeypatch)
    data = synthetic_data(type(model), torch.device("cpu"), n=3)
    (chunk,) = image_chunks(model, data, 3, 3, chain_steps=2)
    assert len(inputs) == 1 + 2 + 1  # q(z|x) of the data, 2 sampled steps, the output step
    assert torch.equal(inputs[1], start)
    pixels = model.pixels
    assert torch.equal(chunk.limiting, pixels.export(model.p_x(chunk.limiting_z[1])))
    assert torch.equal(chunk.shot, pixels.export(model.p_x(chunk.prior_z[1])))
    if pixels.binary:
        assert set(chunk.shot.unique().tolist()) <= {0.0, 1.0}


def test_fid_start_names_are_used(monkeypatch):
    seen = []
    for name in EXPERIMENTS:
        model = tiny(name)
        fid_start = model.fid_chain_start
        original = CHAIN_STARTS[fid_start]
        monkeypatch.setitem(CHAIN_STARTS, fid_start,
                            lambda m, n, f=original, s=fid_start: seen.append(s) or f(m, n))
        data = synthetic_data(type(model), torch.device("cpu"), n=2)
        list(image_chunks(model, data, 2, 2, chain_steps=0))
        monkeypatch.setitem(CHAIN_STARTS, fid_start, original)
    assert seen == ["ancestral", "exported_shot", "binary_noise"]


# --- the training grid's chain ------------------------------------------------------------
def trainer(name: str) -> Trainer:
    torch.manual_seed(0)
    cls = load_model_class(name)
    args = SimpleNamespace(stepsize=1e-4, nan_policy="stop", bs=16, nz0=NZ0, nz1=NZ1)
    return Trainer(cls(NZ0, NZ1), "sym", synthetic_data(cls, torch.device("cpu"), n=64), None,
                   args, torch.device("cpu"))


@pytest.mark.parametrize("name", ["mnist-ladder", "fmnist-ladder"])
def test_grid_chain_starts_as_generate_and_steps_once_per_iteration(name, monkeypatch):
    t = trainer(name)
    if name == "mnist-ladder":
        assert set(t.chain.unique().tolist()) == {0.0, 1.0} and t.chain.shape[0] == GRID_COLUMNS
    inputs = count_encoder_passes(t.model, monkeypatch)
    for _ in range(3):
        before = t.chain
        t.iteration()
        # sym: q(z|x) of the batch, then the chain's one step from where it stood
        assert len(inputs) == 2 and torch.equal(inputs[1], before)
        assert not torch.equal(t.chain, before)
        inputs.clear()


@pytest.mark.parametrize("name,rows", [("mnist-ladder", 4), ("fmnist-ladder", 5)])
def test_grid_rows_are_the_authors(name, rows, monkeypatch, tmp_path):
    t = trainer(name)
    t.files = train.RunFiles(tmp_path, "x")
    t.iteration()
    clean, noisy = t.grid_batch
    chain = t.chain.clone()
    saved = []
    monkeypatch.setattr(train, "save_grid", lambda images, path, nrow: saved.append(images))
    with torch.no_grad():
        t.save_grid()
    (grid,) = saved
    assert grid.shape == (rows * GRID_COLUMNS, 1, 28, 28)
    first = grid[:GRID_COLUMNS]
    assert not torch.equal(clean, noisy)
    assert torch.equal(first, clean if name == "mnist-ladder" else noisy)
    assert torch.equal(t.chain, chain)  # the grid's extra step leaves the chain as is


def test_grid_batch_is_the_first_images_of_the_training_batch(monkeypatch):
    t = trainer("mnist-ladder")
    batches = []
    window = t.data.window
    monkeypatch.setattr(t.data, "window", lambda bs: batches.append(window(bs)) or batches[-1])
    t.iteration()
    clean, noisy = t.grid_batch
    assert torch.equal(clean, batches[0][:GRID_COLUMNS])
    assert (clean != noisy).float().mean() < 0.01  # flips with probability 0.001


def test_grid_draws_leave_training_rng_but_chain_step_is_part_of_the_iteration(tmp_path):
    a, b = trainer("mnist-ladder"), trainer("mnist-ladder")
    for t in (a, b):
        t.files = train.RunFiles(tmp_path, "x")
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "logs").mkdir(exist_ok=True)
        (tmp_path / "models").mkdir(exist_ok=True)
    torch.manual_seed(9)
    a.iteration()
    a.save()
    a.iteration()
    state_a = torch.get_rng_state()
    torch.manual_seed(9)
    b.iteration()
    b.iteration()
    assert torch.equal(state_a, torch.get_rng_state())
    assert torch.equal(a.chain, b.chain)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        np.testing.assert_array_equal(pa.detach(), pb.detach())
