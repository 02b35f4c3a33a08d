"""The training iteration as one captured CUDA graph, replayed (docs/gpu.md).

`Trainer.device_iteration` (batch draw, noise, both players' steps with their
sampling, running statistics) issues no host synchronisation, so its kernels
can be recorded once and replayed each iteration with a single launch. A graph
replays fixed kernels on fixed memory, which asks three things of the code:

- Tensors the iteration *rebinds* (`stats = lerp(stats, ...)` makes a new
  tensor) must be written back into the tensors the next replay reads: the
  captured region ends by copying each rebound state tensor into its old
  storage, and the trainer is pointed back at those.
- Python numbers are frozen at capture: the running means' weight is
  1/(count+1) for the first EXACT_AVERAGE_STEPS iterations, so the graph is
  captured only after those (they run eagerly); Adam is switched to its
  `capturable` form, whose step counter lives on the device.
- The host-side part of the batch sampler (redrawing the permutation into the
  same tensor) runs between replays, in `DeviceData.advance`.

A capture is not trusted blindly: the first replay is checked against an eager
run of the same iteration from the same state (`CapturedIteration.check`), and
any failure, there or while capturing, puts the state back as it was and the
run continues eagerly (the trainer logs one line).

`OpTape` replays the same way on the CPU: it records every aten operation of
one run and re-executes them on the recorded tensors, so the tests check the
capture logic (write-back, frozen numbers, no host synchronisation) against
eager training without a GPU.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import ExitStack
from unittest import mock

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from symvae.learn.stats import EXACT_AVERAGE_STEPS

# aten operations that read a device value on the host: not allowed inside a graph
HOST_READS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "item"}


class CaptureError(RuntimeError):
    """The iteration cannot be captured (a host synchronisation or a changing state)."""


def capture_count(args, device: torch.device) -> int | None:
    """The iteration count from which the run replays a graph, or None to stay eager.

    Captured on CUDA by default, unless a per-iteration host check is asked for
    (--nan_policy skip, --detect_anomaly) or --cuda_graph off.
    """
    if device.type != "cuda" or getattr(args, "cuda_graph", "auto") == "off":
        return None
    if args.nan_policy == "skip" or getattr(args, "detect_anomaly", False):
        return None
    return EXACT_AVERAGE_STEPS


def make_eager(optimizers: list[torch.optim.Optimizer]) -> None:
    """Adams in their default form, step counts on the host: how a checkpoint's optimiser
    state is loaded on any device (a captured run saves the capturable form)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["capturable"] = False
            for p in group["params"]:
                state = opt.state.get(p, {})
                if isinstance(state.get("step"), Tensor):
                    state["step"] = state["step"].detach().to("cpu", torch.float32)


def make_capturable(optimizers: list[torch.optim.Optimizer]) -> None:
    """Switch Adams to `capturable` (step counts as device tensors beside the parameters)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["capturable"] = True
            for p in group["params"]:
                state = opt.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(p.device, torch.float32)


def state_tensors(trainer) -> dict[str, Tensor]:
    """The running statistics an iteration may rebind, by name."""
    state = {f"means.{k}": v for k, v in trainer.means.values.items()}
    for group, tracker in trainer.mi.items():
        state.update({f"mi.{group}.{k}": v for k, v in tracker.state_dict().items()
                      if isinstance(v, Tensor)})
    if isinstance(trainer.chain, Tensor):
        state["chain"] = trainer.chain
    if trainer.grid_batch is not None:
        state["grid.clean"], state["grid.noisy"] = trainer.grid_batch
    return state


def rebind(trainer, state: dict[str, Tensor]) -> None:
    """Point the trainer's statistics at the tensors in `state` (names as state_tensors)."""
    trainer.means.values.update({k[6:]: v for k, v in state.items() if k.startswith("means.")})
    for group, tracker in trainer.mi.items():
        own = tracker.state_dict()
        own.update({k.split(".", 2)[2]: v for k, v in state.items()
                    if k.startswith(f"mi.{group}.")})
        tracker.load_state_dict(own)
    if "chain" in state:
        trainer.chain = state["chain"]
    if "grid.clean" in state:
        trainer.grid_batch = state["grid.clean"], state["grid.noisy"]


def _optimizer_tensors(trainer) -> list[Tensor]:
    return [v for opt in trainer.learner.optimizers for state in opt.state.values()
            for v in state.values() if isinstance(v, Tensor)]


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        try:
            torch.cuda.set_rng_state(state[1], device)
        except RuntimeError:  # only which random numbers come next changes; the check then
            pass  # compares different draws and fails, which falls back to eager


class Snapshot:
    """Copies of everything an iteration changes (parameters, optimiser state, running
    statistics with the grid's chain, the running means' count, the generators), put back
    *into the same tensors*: a graph keeps reading the memory it was recorded with."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.params = [*trainer.model.parameters(), *trainer.model.buffers()]
        self.optim = _optimizer_tensors(trainer)
        self.state = state_tensors(trainer)
        self.copies = [t.detach().clone() for t in self.tensors()]
        self.count = trainer.means.count
        self.rng = _rng_state(trainer.device)

    def tensors(self) -> list[Tensor]:
        return [*self.params, *self.optim, *self.state.values()]

    @torch.no_grad()
    def restore(self) -> None:
        for t, saved in zip(self.tensors(), self.copies, strict=True):
            t.copy_(saved)
        rebind(self.trainer, self.state)
        self.trainer.means.count = self.count
        _set_rng_state(self.trainer.device, self.rng)


def relative_difference(a: list[Tensor], b: list[Tensor]) -> float:
    """The largest ||a_i - b_i|| / ||a_i|| over pairs of tensors (0 where both are zero)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().double(), y.detach().double()
        diff = float((x - y).norm())
        if diff:
            worst = max(worst, diff / max(float(x.norm()), 1e-30))
    return worst


CHECK_TOLERANCE = 1e-5  # replay against eager, relative; rounding differs at most in last bits


class OpTape(TorchDispatchMode):
    """A CPU stand-in for a CUDA graph: records aten calls once, replays them in place.

    Replaying re-runs each call on the recorded input tensors and copies the results
    into the recorded outputs, so later calls and later replays read them, as a graph's
    kernels read fixed memory. Random operations draw afresh from the generator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in HOST_READS:
            raise CaptureError(f"host synchronisation ({func}) inside the captured iteration")
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out

    def capture(self, fn: Callable[[], None]) -> None:
        """Run `fn` once (for real) while recording it. Adam's capturable form is allowed
        on the CPU here: its arithmetic is plain tensor operations."""
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(
                importlib.import_module("torch.optim.adam"), "_get_capturable_supported_devices",
                lambda *a, **k: ["cpu"]))
            stack.enter_context(self)
            fn()

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, out in self.calls:
                fresh = func(*args, **kwargs)
                for old, new in zip(tree_flatten(out)[0], tree_flatten(fresh)[0], strict=True):
                    if isinstance(old, Tensor) and old.data_ptr() != new.data_ptr():
                        old.copy_(new)


class CudaGraphTape:
    """torch.cuda.CUDAGraph with the warm-up the capture needs, on a side stream."""

    def __init__(self, device: torch.device) -> None:
        # recorded and replayed on the run's device, whichever is current (cuda:N, N > 0)
        self.device = device
        with torch.cuda.device(device):
            self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        """Run `fn` once for real (warm-up on a side stream), then record it (nothing runs)."""
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(self.graph):
                fn()

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


class CapturedIteration:
    """One recorded `device_iteration` with its state written back; `replay()` is one iteration.

    Capturing runs one real iteration (so the run's count stays right), on the
    device's tape: a CUDA graph on CUDA, an OpTape elsewhere. The first replay is
    checked (`check`) before it counts.
    """

    def __init__(self, trainer, tape=None):
        self.trainer = trainer
        self.tape = tape or (CudaGraphTape(trainer.device) if trainer.device.type == "cuda"
                             else OpTape())
        make_capturable(trainer.learner.optimizers)
        self.state: dict[str, Tensor] = {}
        self.checked: float | None = None  # the check's relative difference, once passed
        count = trainer.means.count
        self.tape.capture(self._body)
        rebind(trainer, self.state)
        trainer.means.count = count + 1  # one real iteration, whether recording ran it or not

    def _body(self) -> None:
        """The iteration, then each rebound statistic copied back into the tensor the
        next replay reads. The first call (the real one) fixes those tensors."""
        trainer = self.trainer
        self.state = self.state or dict(state_tensors(trainer))
        trainer.device_iteration()
        after = state_tensors(trainer)
        if after.keys() != self.state.keys():
            raise CaptureError(f"the iteration changed its statistics {sorted(after)} "
                               f"(were {sorted(self.state)}): run one eager iteration first")
        for name, old in self.state.items():
            if after[name] is not old:
                old.copy_(after[name])
        rebind(trainer, self.state)

    def replay(self) -> None:
        """One iteration; the first one is checked (CaptureError, state as before, if bad)."""
        if self.checked is None:
            self.checked = self.check()
            return
        self.tape.replay()
        # the host-side count of the running means, which a graph cannot advance
        self.trainer.means.count += 1

    def check(self) -> float:
        """Run the next iteration eagerly, put the state back, replay it: the parameters must
        move, and replay and eager must agree (CHECK_TOLERANCE, relative) on the parameters,
        the optimiser state and the statistics. Leaves the replayed iteration done; raises
        CaptureError with the state as before the iteration otherwise.

        The sampled chain is not compared: one Bernoulli draw at a rounding boundary flips a
        pixel there, a legitimate difference.
        """
        trainer = self.trainer
        before = Snapshot(trainer)
        compared = before.params + before.optim + [v for k, v in before.state.items()
                                                   if not k.startswith(("chain", "grid."))]
        try:
            self._body()
            trainer.means.count += 1
            eager = [t.detach().clone() for t in compared]
            before.restore()
            self.tape.replay()
            trainer.means.count += 1
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
        except Exception as err:
            before.restore()
            raise CaptureError(f"the first replay failed ({type(err).__name__}: {err})") from err
        moved = relative_difference(before.copies[:len(before.params)], before.params)
        diff = relative_difference(eager, compared)
        if not moved or not diff <= CHECK_TOLERANCE:
            before.restore()
            why = "left the parameters unchanged" if not moved else \
                f"differs from the eager iteration by {diff:.3g} (relative)"
            raise CaptureError(f"the replayed iteration {why}")
        return diff


def capture_iteration(trainer, tape=None) -> CapturedIteration:
    """Capture the trainer's device iteration (running it once); the caller replays it."""
    if trainer.learner.guard:
        raise CaptureError("the per-iteration finiteness check reads the host; capture needs "
                           "it off (the default on CUDA with --nan_policy stop)")
    if trainer.data.perm is None:
        raise CaptureError("the data are still in their stored order; capture once the sampler "
                           "has drawn its first permutation")
    if trainer.means.count < EXACT_AVERAGE_STEPS:
        raise CaptureError(f"the running means change their weight until count "
                           f"{EXACT_AVERAGE_STEPS}; capture from then on")
    if trainer.grid_batch is None:  # a resumed run has drawn no batch yet: buffers that the
        # iteration overwrites with its batch (nothing random is drawn for them)
        n = min(len(trainer.chain), trainer.args.bs)  # the batch's first images, as the grid
        first = trainer.data.as_float(trainer.data.images[:n])
        trainer.grid_batch = first, first.clone()
    make_capturable(trainer.learner.optimizers)  # before the snapshot: it holds their steps
    before = Snapshot(trainer)
    try:
        return CapturedIteration(trainer, tape)
    except Exception as err:
        before.restore()
        make_eager(trainer.learner.optimizers)
        if isinstance(err, CaptureError):
            raise
        raise CaptureError(f"capturing failed ({type(err).__name__}: {err})") from err

