"""The captured training iteration (symvae.capture) against eager training, on the CPU.

OpTape replays recorded operations on fixed tensors as a CUDA graph does, so a
run that switches to replaying must end with exactly the parameters and
statistics of an eager run from the same seed (both with Adam's capturable form,
which rounds differently from the default one in the last bits), and the
sampler's permutation redraws must reach the replays.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from symvae import bench, capture, stats
from symvae.capture import CaptureError, OpTape, capture_count, capture_iteration

CAPTURE_AT = 3
ITERATIONS = 12  # with 40 images and batch 8 the permutation is redrawn every 5


@pytest.fixture
def early_capture(monkeypatch):
    """The running means' exact-average phase shortened, so capture can start early, and
    Adam's capturable form allowed on the CPU (its arithmetic is plain tensor operations)."""
    monkeypatch.setattr(stats, "EXACT_AVERAGE_STEPS", CAPTURE_AT)
    monkeypatch.setattr(capture, "EXACT_AVERAGE_STEPS", CAPTURE_AT)
    monkeypatch.setattr(importlib.import_module("torch.optim.adam"),
                        "_get_capturable_supported_devices", lambda *a, **k: ["cpu"])


def trained(experiment: str, method: str, captured: bool):
    trainer = bench.build_trainer(experiment, method, 8, torch.device("cpu"), seed=3, nz=(6, 10))
    trainer.data = bench.synthetic_data(type(trainer.model), torch.device("cpu"), n=40)
    trainer.learner.guard = False  # as on CUDA: no per-iteration host check
    capture.make_capturable(trainer.learner.optimizers)
    if captured:
        trainer.capture_at = CAPTURE_AT
    torch.manual_seed(5)
    for _ in range(ITERATIONS):
        trainer.iteration()
        trainer.count += 1
    return trainer


@pytest.mark.parametrize("experiment", [
    pytest.param(name, marks=[] if name == "mnist-ladder" else [pytest.mark.slow])
    for name in bench.available_experiments()])
@pytest.mark.parametrize("method", ["sym", "elbo"])
def test_replayed_iterations_equal_eager_ones(early_capture, experiment, method):
    eager, replayed = trained(experiment, method, False), trained(experiment, method, True)
    assert isinstance(replayed.captured.tape, OpTape) and eager.captured is None
    for a, b in zip(eager.model.parameters(), replayed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert eager.means.read() == replayed.means.read()
    for group, tracker in eager.mi.items():
        assert torch.equal(tracker.mi, replayed.mi[group].mi)
    assert replayed.means.count == eager.means.count == ITERATIONS
    assert torch.equal(eager.data.perm, replayed.data.perm)


def test_without_the_write_back_replays_read_stale_statistics(early_capture, monkeypatch):
    """The tape keeps a graph's fixed memory: dropping the write-back must show."""
    monkeypatch.setattr(capture, "rebind", lambda trainer, state: None)
    monkeypatch.setattr(capture, "state_tensors", lambda trainer: {})
    eager, replayed = trained("mnist-ladder", "sym", False), trained("mnist-ladder", "sym", True)
    assert eager.means.read()["ploss1"] != replayed.means.read()["ploss1"]


def test_a_host_read_cannot_be_captured():
    x = torch.ones(3)
    with pytest.raises(CaptureError, match="host synchronisation"):
        OpTape().capture(lambda: float(x.sum()))


def test_capture_needs_the_guard_off_and_the_fixed_weight(early_capture):
    trainer = bench.build_trainer("mnist-ladder", "sym", 8, torch.device("cpu"), nz=(6, 10))
    with pytest.raises(CaptureError, match="finiteness"):
        capture_iteration(trainer)
    trainer.learner.guard = False
    with pytest.raises(CaptureError, match="stored order"):  # nothing permuted yet
        capture_iteration(trainer)
    trainer.data.advance(len(trainer.data))  # period 1: the first draw permutes
    with pytest.raises(CaptureError, match="weight"):
        capture_iteration(trainer)


def test_capture_is_the_cuda_default_unless_a_host_check_is_asked_for():
    from types import SimpleNamespace as Args
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    plain = Args(nan_policy="stop", detect_anomaly=False, cuda_graph="auto")
    assert capture_count(plain, cuda) == stats.EXACT_AVERAGE_STEPS
    assert capture_count(plain, cpu) is None
    assert capture_count(Args(**{**vars(plain), "nan_policy": "skip"}), cuda) is None
    assert capture_count(Args(**{**vars(plain), "detect_anomaly": True}), cuda) is None
    assert capture_count(Args(**{**vars(plain), "cuda_graph": "off"}), cuda) is None


def test_the_benchmark_times_the_replayed_iteration(early_capture):
    row = bench.bench_pair("mnist-ladder", "elbo", 4, torch.device("cpu"), iters=2, warmup=2,
                           compiled=False, captured=True)
    assert row["capture"] and len(row["times"]) == 2 and row["seconds"] > 0
