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

from symvae.stats import EXACT_AVERAGE_STEPS

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

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        """Run `fn` once for real (warm-up on a side stream), then record it (nothing runs)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class CapturedIteration:
    """One recorded `device_iteration` with its state written back; `replay()` is one iteration.

    Capturing runs one real iteration (so the run's count stays right), on the
    device's tape: a CUDA graph on CUDA, an OpTape elsewhere.
    """

    def __init__(self, trainer, tape=None):
        self.trainer = trainer
        self.tape = tape or (CudaGraphTape() if trainer.device.type == "cuda" else OpTape())
        make_capturable(trainer.learner.optimizers)
        self.state: dict[str, Tensor] = {}
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
        self.tape.replay()
        # the host-side count of the running means, which a graph cannot advance
        self.trainer.means.count += 1


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
    return CapturedIteration(trainer, tape)

