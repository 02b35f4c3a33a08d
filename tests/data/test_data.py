"""The data layer: IDX loading, preprocessing, the batch sampler and training noise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import write_checksums, write_idx

from symvae.data.datasets import Dataset, DeviceData, flip_noise, gaussian_noise
from symvae.data.raw import DataMissing, default_data_root

MNIST = Dataset("MNIST", threshold=0.4375, noise=flip_noise(0.001))
FASHION = Dataset("FashionMNIST", threshold=None, noise=gaussian_noise(0.01))


def write_pixels(root, folder, train: np.ndarray, test: np.ndarray) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, images in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.zeros(len(images)))
    write_checksums(raw)


def test_train_and_test_are_concatenated_in_order(tmp_path):
    train = np.stack([np.full((28, 28), i, np.uint8) for i in range(5)])
    test = np.stack([np.full((28, 28), 100 + i, np.uint8) for i in range(3)])
    write_pixels(tmp_path, "FashionMNIST", train, test)
    data = FASHION.load(tmp_path, torch.device("cpu"), fetch=False)
    assert len(data) == 8 and data.images.shape == (8, 1, 28, 28)
    values = data.as_float(data.images)[:, 0, 0, 0]
    expected = torch.tensor([0, 1, 2, 3, 4, 100, 101, 102]) / 255
    assert torch.equal(values, expected.float())  # grey levels untouched: uint8/255


def test_mnist_binarised_exactly_above_0_4375(tmp_path):
    img = np.zeros((2, 28, 28), np.uint8)
    img[0, 0, 0], img[0, 0, 1], img[0, 0, 2] = 111, 112, 255
    write_pixels(tmp_path, "MNIST", img, img[:1])
    data = MNIST.load(tmp_path, torch.device("cpu"), fetch=False)
    x = data.as_float(data.images)
    assert x[0, 0, 0, :3].tolist() == [0.0, 1.0, 1.0]  # 111/255 < 0.4375 < 112/255
    assert set(x.unique().tolist()) == {0.0, 1.0}


def test_missing_data_names_root_and_fetch_command(tmp_path):
    with pytest.raises(DataMissing) as err:
        MNIST.load(tmp_path / "nowhere", torch.device("cpu"), fetch=False)
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "python -m symvae.data fetch mnist" in str(err.value)


def test_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMVAE_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("SYMVAE_DATA")
    assert default_data_root().name == "data"


def coded_data(n: int) -> DeviceData:
    """Image i has every pixel equal to i, so a batch tells which images it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28)
    return DeviceData(images.contiguous(), 1.0)


def test_sampler_shapes_and_every_image_reachable():
    torch.manual_seed(0)
    data = coded_data(50)
    seen = set()
    for _ in range(200):
        x = data.batch(8)
        assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
        assert x.device == data.images.device
        ids = x[:, 0, 0, 0].long().tolist()
        assert len(set(ids)) == 8  # a window of a permutation: no repeats within a batch
        seen.update(ids)
    assert seen == set(range(50))


def test_sampler_keeps_stored_order_then_reshuffles_before_every_period_th_batch():
    """As the authors' get_batch: shuffle when count % (n // bs) == n // bs - 1, before drawing."""
    torch.manual_seed(1)
    data = coded_data(40)  # period 40 // 10 = 4
    for _ in range(3):  # counts 0, 1, 2: windows of the stored order
        ids = data.batch(10)[:, 0, 0, 0].long()
        assert torch.equal(ids, torch.arange(ids[0], ids[0] + 10))
    assert data.perm is None
    data.batch(10)  # count 3: reshuffled first
    first = data.perm.clone()
    assert not torch.equal(first, torch.arange(40))
    for _ in range(3):
        data.batch(10)
    assert torch.equal(first, data.perm)  # counts 4..6 on one order
    data.batch(10)  # count 7: a new permutation of the current order
    assert not torch.equal(first, data.perm)
    assert sorted(data.perm.tolist()) == list(range(40))


def test_sampler_window_start_excludes_n_minus_bs():
    """NumPy's randint(n - bs): starts 0 .. n - bs - 1, so the last image of an order is never
    in the window; with n - bs = 2 the starts are 0 and 1 only."""
    torch.manual_seed(3)
    data = coded_data(12)  # period 12 // 10 = 1: reshuffled before every batch
    starts = set()
    for _ in range(200):
        ids = data.batch(10)[:, 0, 0, 0].long()
        starts.add(int((data.perm == ids[0]).nonzero()))
    assert starts == {0, 1}


def test_sampler_state_round_trip():
    torch.manual_seed(2)
    a, b = coded_data(30), coded_data(30)
    a.batch(7)
    b.load_state_dict(a.state_dict())
    state = torch.get_rng_state()
    xa = a.batch(7)
    torch.set_rng_state(state)
    assert torch.equal(xa, b.batch(7))


def test_flip_noise_rate_within_bounds():
    torch.manual_seed(3)
    x = torch.zeros(2_000_000)
    rate = flip_noise(0.001)(x).mean().item()
    sd = math.sqrt(0.001 * 0.999 / x.numel())
    assert abs(rate - 0.001) < 5 * sd
    ones = flip_noise(0.001)(torch.ones(1000))
    assert set(ones.unique().tolist()) <= {0.0, 1.0}


def test_gaussian_noise_std_within_bounds():
    torch.manual_seed(4)
    x = torch.full((1_000_000,), 0.5)
    noisy = gaussian_noise(0.01)(x) - 0.5
    assert abs(noisy.mean().item()) < 5 * 0.01 / 1000
    assert abs(noisy.std().item() - 0.01) < 0.01 * 0.01
