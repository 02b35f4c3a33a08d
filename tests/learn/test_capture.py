"""The captured training iteration (symvae.learn.capture) against eager training, on the CPU.

OpTape replays recorded operations on fixed tensors as a CUDA graph does, so a
run that switches to replaying must end with exactly the parameters and
statistics of an eager run from the same seed (both with Adam's capturable form,
which rounds differently from the default one in the last bits), and the
sampler's permutation redraws must reach the replays.
"""
from __future__ import annotations

import contextlib
import importlib
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from symvae.experiment import load_model_class
from symvae.learn import capture, stats
from symvae.learn import checkpoint as ckpt_io
from symvae.learn.capture import CaptureError, OpTape, capture_count, capture_iteration
from symvae.learn.rules import NonFinite
from symvae.learn.train import Trainer
from symvae.reproduce import bench

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


def fresh(experiment: str, method: str, captured: bool):
    trainer = bench.build_trainer(experiment, method, 8, torch.device("cpu"), seed=3, nz=(6, 10))
    trainer.data = bench.synthetic_data(type(trainer.model), torch.device("cpu"), n=40)
    trainer.learner.guard = False  # as on CUDA: no per-iteration host check
    capture.make_capturable(trainer.learner.optimizers)
    if captured:
        trainer.capture_at = CAPTURE_AT
    return trainer


def advance(trainer, until: int):
    while trainer.count < until:
        trainer.iteration()
        trainer.count += 1
    return trainer


def trained(experiment: str, method: str, captured: bool):
    trainer = fresh(experiment, method, captured)
    torch.manual_seed(5)
    return advance(trainer, ITERATIONS)


def assert_same_run(a, b):
    """Parameters, running means, MI statistics, grid chain, sampler: bit for bit."""
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    assert a.means.read() == b.means.read() and a.means.count == b.means.count
    for group, tracker in a.mi.items():
        assert torch.equal(tracker.mi, b.mi[group].mi) and torch.equal(tracker.m, b.mi[group].m)
    assert torch.equal(a.chain, b.chain)
    assert torch.equal(a.data.perm, b.data.perm) and a.data.count == b.data.count


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
    # the first replay was checked against an eager iteration, and passed
    assert replayed.captured.checked == 0.0
    assert any(n.startswith("# CUDA graph captured at count 4;") for n in replayed.notes)


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
    row = bench.bench_pair("mnist-ladder", "elbo", 4, torch.device("cpu"), iters=2, warmup=0,
                           compiled=False, captured=True)
    assert row["capture"] and len(row["times"]) == 2 and row["seconds"] > 0
    # captured and checked before the timed iterations: every timed one was a replay
    assert row["replayed"] is True and row["replays_timed"] == 2


# --- the check of the first replay, and the fallback to eager ---------------------------------
class NullTape(OpTape):
    """A graph that came out empty: replaying does nothing."""

    def replay(self) -> None:
        pass


class NoWriteBackTape(OpTape):
    """Replays the operations but never writes their results into the recorded tensors."""

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, _ in self.calls:
                func(*args, **kwargs)


def capture_raises_midway(self, fn):
    fn()  # the iteration ran (state advanced), then something failed
    raise RuntimeError("device lost")


@pytest.mark.parametrize("patch", [
    ("OpTape", NullTape), ("OpTape", NoWriteBackTape), ("OpTape.capture", capture_raises_midway)])
def test_a_bad_capture_is_caught_and_the_run_goes_on_eagerly(early_capture, monkeypatch, patch):
    name, value = patch
    if name == "OpTape":
        monkeypatch.setattr(capture, "OpTape", value)
    else:
        monkeypatch.setattr(OpTape, "capture", value)
    eager, fallen = trained("mnist-ladder", "sym", False), trained("mnist-ladder", "sym", True)
    assert fallen.captured is None and fallen.capture_at is None
    assert sum("CUDA graph not used" in n for n in fallen.notes) == 1
    # the state was put back and the iteration run eagerly: the same run but for Adam's
    # default form after the fallback (rounding in the last bits)
    for a, b in zip(eager.model.parameters(), fallen.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert fallen.means.count == eager.means.count == ITERATIONS
    assert torch.equal(eager.data.perm, fallen.data.perm)
    assert not any(g["capturable"] for opt in fallen.learner.optimizers
                   for g in opt.param_groups)


def test_the_check_rejects_an_empty_graph(early_capture):
    trainer = advance(fresh("mnist-ladder", "elbo", False), CAPTURE_AT + 3)  # permuted by now
    captured = capture.CapturedIteration(trainer, NullTape())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(CaptureError, match="left the parameters unchanged"):
        captured.replay()
    for a, b in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)  # put back as before the iteration


# --- resuming ---------------------------------------------------------------------------------
def checkpoint_after(trainer, tmp_path):
    trainer.args.nz0, trainer.args.nz1 = 6, 10
    path = tmp_path / "m.pt"
    ckpt_io.save(path, trainer.state_dict())
    return ckpt_io.load(path), path


def resumed_from(ckpt, path, captured: bool):
    trainer = fresh("mnist-ladder", "sym", captured)
    trainer.args.nz0, trainer.args.nz1 = 6, 10
    trainer.restore(ckpt, path)
    return trainer


def test_resuming_past_the_capture_point_continues_the_same_run(early_capture, tmp_path):
    whole = trained("mnist-ladder", "sym", True)
    whole_rng = torch.get_rng_state()
    first = fresh("mnist-ladder", "sym", True)
    torch.manual_seed(5)
    advance(first, 7)  # captured at 3, replaying since
    ckpt, path = checkpoint_after(first, tmp_path)
    second = advance(resumed_from(ckpt, path, True), ITERATIONS)
    assert second.captured is not None and second.captured.checked == 0.0
    assert_same_run(whole, second)
    assert torch.equal(torch.get_rng_state(), whole_rng)  # the generator where it would be
    assert all(torch.equal(a, b) for a, b in zip(
        [v for o in whole.learner.optimizers for s in o.state.values() for v in s.values()],
        [v for o in second.learner.optimizers for s in o.state.values() for v in s.values()],
        strict=True))


def test_a_captured_runs_checkpoint_resumes_eagerly_on_the_cpu(early_capture, monkeypatch,
                                                                 tmp_path):
    run = fresh("mnist-ladder", "sym", True)
    torch.manual_seed(5)
    advance(run, 6)
    ckpt, path = checkpoint_after(run, tmp_path)
    assert all(g["capturable"] for o in ckpt["optimizers"] for g in o["param_groups"])
    monkeypatch.undo()  # Adam's capturable form is refused on the CPU again, as in real runs
    trainer = resumed_from(ckpt, path, False)
    advance(trainer, 9)  # today's torch asserts here unless the state is loaded device-neutral
    assert trainer.count == 9 and all(
        torch.isfinite(p).all() for p in trainer.model.parameters())


# --- the device, and non-finite values --------------------------------------------------------
def test_the_graph_is_recorded_and_replayed_on_the_runs_device(monkeypatch):
    """`--device cuda:1`: with another device current, the graph must still be cuda:1's."""
    current, seen = ["cuda:0"], []

    @contextlib.contextmanager
    def device(d):
        old, current[0] = current[0], str(d)
        yield
        current[0] = old

    @contextlib.contextmanager
    def plain(*_):
        seen.append(current[0])
        yield

    def where(*_):
        seen.append(current[0])
        return SimpleNamespace(wait_stream=where, replay=lambda: seen.append(current[0]))
    for name, value in {"device": device, "CUDAGraph": where, "Stream": where,
                        "current_stream": where, "stream": plain, "graph": plain}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    tape = capture.CudaGraphTape(torch.device("cuda", 1))
    tape.capture(lambda: seen.append(current[0]))
    tape.replay()
    assert len(seen) >= 6 and set(seen) == {"cuda:1"}


def test_a_nan_weight_stops_as_divergence_not_inside_bernoulli():
    """A NaN encoder weight: sampling must not fail; the loss check names it (exit 3 path)."""
    trainer = bench.build_trainer("mnist-ladder", "sym", 8, torch.device("cpu"), nz=(6, 10))
    advance(trainer, 2)
    with torch.no_grad():
        next(iter(trainer.model.q_parameters())).view(-1)[0] = float("nan")
    with pytest.raises(NonFinite):
        trainer.iteration()
    # without the per-iteration check (CUDA) the iteration runs and the log time catches it
    trainer.learner.guard = False
    trainer.iteration()
    with pytest.raises(NonFinite):
        trainer.log_values()


# --- what a CUDA graph needs that the tape does not see -----------------------------------------
class DeviceAudit(TorchDispatchMode):
    """Every aten call: host reads, and any tensor on the CPU among inputs or outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.host_reads: list[str] = []
        self.on_cpu: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in capture.HOST_READS:
            self.host_reads.append(name)
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu"
               for t in tree_flatten((args, kwargs, out))[0]):
            self.on_cpu.append(name)
        return out


def meta_trainer(experiment: str, method: str):
    """The iteration on the meta device: the CUDA path's shapes and devices, without a GPU."""
    meta = torch.device("meta")
    model_cls = load_model_class(experiment)
    data = bench.synthetic_data(model_cls, torch.device("cpu"), n=40)
    data.images = data.images.to(meta)
    data.perm = torch.randperm(len(data.images), device=meta)
    trainer = Trainer(model_cls(6, 10).to(meta), method, data, None,
                      SimpleNamespace(stepsize=1e-4, nan_policy="stop", bs=8), meta)
    trainer.learner.guard = False
    capture.make_capturable(trainer.learner.optimizers)
    trainer.device_iteration()  # statistics and Adam's state exist from here on, as at capture
    return trainer


@pytest.mark.parametrize("experiment", bench.available_experiments())
@pytest.mark.parametrize("method", ["sym", "elbo"])
def test_the_device_iteration_never_reads_the_host_nor_touches_the_cpu(monkeypatch, experiment,
                                                                       method):
    monkeypatch.setattr(importlib.import_module("torch.optim.adam"),
                        "_get_capturable_supported_devices", lambda *a, **k: ["meta"])
    trainer = meta_trainer(experiment, method)
    with DeviceAudit() as audit:
        trainer.device_iteration()
    assert audit.host_reads == [] and audit.on_cpu == []


def test_the_audit_sees_host_reads_and_cpu_tensors():
    x = torch.ones(3, device="meta")
    with DeviceAudit() as audit:
        x + torch.ones(3)[0]  # a CPU scalar tensor mixed in
    assert audit.on_cpu
    with DeviceAudit() as audit, contextlib.suppress(Exception):
        torch.ones(2).sum().item()
    assert audit.host_reads == ["_local_scalar_dense"]


@pytest.mark.parametrize("experiment", bench.available_experiments())
@pytest.mark.parametrize("method", ["sym", "elbo"])
def test_no_autograd_graph_survives_an_iteration(experiment, method):
    """A tensor kept across iterations with a graph attached would pin the captured memory
    and make each replay's backward reach into the previous iteration."""
    trainer = bench.build_trainer(experiment, method, 8, torch.device("cpu"), nz=(6, 10))
    trainer.data = bench.synthetic_data(type(trainer.model), torch.device("cpu"), n=40)
    for _ in range(2):
        trainer.iteration()
        trainer.count += 1
    kept = capture.state_tensors(trainer)
    kept.update({f"optim.{i}": t for i, t in enumerate(capture._optimizer_tensors(trainer))})
    assert len(kept) > 5
    assert [name for name, t in kept.items() if t.grad_fn is not None or t.requires_grad] == []
    assert all(p.grad is None or p.grad.grad_fn is None for p in trainer.model.parameters())
