"""Network building blocks: the layer tables of SPEC.md §2, each in one place."""
from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
IMAGE_SHAPE = (1, 28, 28)
PIXELS = 28 * 28

# (in, out, kernel, stride, padding); output sizes 28, 27, 13, 11, 9, 4, 1.
_TRUNK = [(1, 32, 3, 1, 1), (32, 32, 2, 1, 0), (32, 64, 3, 2, 0), (64, 64, 3, 1, 0),
          (64, 64, 3, 1, 0), (64, 128, 3, 2, 0)]
# Transposed convolutions; output sizes 4, 9, 11, 13, 27, 28 (first input channel is nz1).
_DECODER = [(128, 4, 1, 0), (64, 3, 2, 0), (64, 3, 1, 0), (64, 3, 1, 0), (32, 3, 2, 0),
            (32, 2, 1, 0)]


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")


def image_trunk(width: int, act: str) -> nn.Sequential:
    """x [B,1,28,28] -> features [B, width]: six convolutions and a 4x4 one to width."""
    layers: list[nn.Module] = []
    for cin, cout, k, s, p in _TRUNK + [(128, width, 4, 1, 0)]:
        layers += [nn.Conv2d(cin, cout, k, s, p), activation(act)]
    return nn.Sequential(*layers, nn.Flatten())


def pixel_decoder(nz1: int, act: str) -> nn.Sequential:
    """z1 [B, nz1] -> per-pixel outputs [B,1,28,28] (logits or means, no final activation)."""
    layers: list[nn.Module] = [nn.Unflatten(1, (nz1, 1, 1))]
    cin = nz1
    for cout, k, s, p in _DECODER:
        layers += [nn.ConvTranspose2d(cin, cout, k, s, p), activation(act)]
        cin = cout
    return nn.Sequential(*layers, nn.Conv2d(cin, 1, 3, 1, 1))


def mlp(nin: int, nout: int, width: int, hidden: int, act: str) -> nn.Sequential:
    """Linear(nin,width)-act-[Linear(width,width)-act]*(hidden-1)-Linear(width,nout)."""
    layers: list[nn.Module] = []
    for i in range(hidden):
        layers += [nn.Linear(nin if i == 0 else width, width), activation(act)]
    return nn.Sequential(*layers, nn.Linear(width, nout))


class SkipMLP(nn.Module):
    """mlp(v) + Linear(nin, nout, no bias)(v): the conditional-logit networks of p and q."""

    def __init__(self, nin: int, nout: int, width: int, hidden: int, act: str):
        super().__init__()
        self.mlp = mlp(nin, nout, width, hidden, act)
        self.skip = nn.Linear(nin, nout, bias=False)

    def forward(self, v: Tensor) -> Tensor:
        return self.mlp(v) + self.skip(v)
