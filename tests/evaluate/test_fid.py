"""FID: the Fréchet distance, feature statistics, the 8-bit route of pytorch-fid, the score
command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as TF
from conftest import REPO, run_script, unignored_outputs, write_dataset

from symvae.data.datasets import DeviceData
from symvae.evaluate import fid, frechet, metrics
from symvae.evaluate.export import PngWriter
from symvae.experiment import load_model_class
from symvae.learn import checkpoint as ckpt_io
from symvae.learn.train import RunFiles, Trainer

NZ = ("--nz0", "4", "--nz1", "8")


# --- the Fréchet distance -----------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    eye = np.eye(10)
    zero = np.zeros(10)
    assert frechet.frechet_distance(zero, eye, zero, 4 * eye) == pytest.approx(10, abs=1e-9)
    shifted = zero.copy()
    shifted[3] = 3
    assert frechet.frechet_distance(zero, eye, shifted, 4 * eye) == pytest.approx(19, abs=1e-9)
    # commuting covariances: sum over eigenvalues of (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 2.0, 9.0]), np.array([4.0, 0.5, 1.0])
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    d = frechet.frechet_distance(np.zeros(3), q @ np.diag(a) @ q.T,
                                 np.zeros(3), q @ np.diag(b) @ q.T)
    assert d == pytest.approx(expected, abs=1e-9)


def _statistics(rng, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    feats = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    return feats.mean(0), np.cov(feats, rowvar=False)


@pytest.mark.parametrize("n", [200, 20])  # 20 images of 32 features: a singular product
def test_frechet_distance_equals_pytorch_fids(n):
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(n)
    a, b = _statistics(rng, n, 32), _statistics(rng, n, 32)
    assert frechet.frechet_distance(*a, *b) == pytest.approx(calculate_frechet_distance(*a, *b),
                                                         rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("n", [200, 20])
def test_frechet_distance_needs_no_disp_argument(monkeypatch, n):
    """SciPy 1.18 removed sqrtm's `disp`: the distance must not pass it."""
    import scipy.linalg
    real = scipy.linalg.sqrtm
    expected = frechet.frechet_distance(*_statistics(np.random.default_rng(n), n, 16),
                                    *_statistics(np.random.default_rng(n + 1), n, 16))

    def sqrtm(a, **kwargs):
        if "disp" in kwargs:
            raise TypeError("sqrtm() got an unexpected keyword argument 'disp'")
        return real(a, **kwargs)
    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm)
    got = frechet.frechet_distance(*_statistics(np.random.default_rng(n), n, 16),
                               *_statistics(np.random.default_rng(n + 1), n, 16))
    assert got == expected


def test_feature_stats_match_numpy_mean_and_cov():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(103, 6)) * [1, 2, 3, 4, 5, 6] + 1000  # large offset: no cancellation
    stats = frechet.FeatureStats()
    for i in range(0, 103, 10):
        stats.add(torch.from_numpy(feats[i:i + 10]).float())
    mu, sigma = stats.mu_sigma()
    f32 = feats.astype(np.float32).astype(np.float64)  # what a float32 network hands over
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        one = frechet.FeatureStats()
        one.add(torch.zeros(1, 3))
        one.mu_sigma()


# --- the images as pytorch-fid reads the PNG files ------------------------------------------------
def test_inception_input_equals_pytorch_fid_png_route(tmp_path: Path):
    from pytorch_fid.fid_score import ImagePathDataset
    values = torch.linspace(-0.1, 1.1, 2 * 784)  # below 0, above 1, and many rounding cases
    halves = (torch.arange(784) + 0.5) / 255  # exactly between two 8-bit levels
    images = torch.cat([values.view(2, 1, 28, 28), halves.view(1, 1, 28, 28)])
    PngWriter(0).write(tmp_path, 0, images)  # generate_data.py's writer
    files = sorted(tmp_path.glob("*.png"))
    read = torch.stack([ImagePathDataset(files, TF.ToTensor())[i] for i in range(len(files))])
    assert torch.equal(frechet.inception_input(images), read)


# --- the pipeline with a small feature map whose statistics are known -----------------------------
def two_pixels(x: torch.Tensor) -> torch.Tensor:
    """Features: pixel (0,0) of the red and pixel (0,1) of the green channel."""
    return torch.stack([x[:, 0, 0, 0], x[:, 1, 0, 1]], 1)


def test_pipeline_on_images_with_known_statistics():
    n = 40  # the four corners of {0,1}^2, ten times each
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    a = torch.zeros(n, 1, 28, 28)
    a[:, 0, 0, :2] = corners
    b = a.clone()
    b[:, 0, 0, 1] = 0.5  # quantised to 128/255, as in the PNG file
    chunks = lambda x: (x[i:i + 13] for i in range(0, n, 13))  # uneven chunks
    mu_a, sigma_a = frechet.image_statistics(chunks(a), two_pixels, bs=5)
    mu_b, sigma_b = frechet.image_statistics(chunks(b), two_pixels, bs=5)
    v = 0.25 * n / (n - 1)  # unbiased variance of a fair 0/1 pixel
    np.testing.assert_allclose(mu_a, [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(sigma_a, v * np.eye(2), atol=1e-12)
    np.testing.assert_allclose(mu_b, [0.5, 128 / 255], atol=1e-7)
    np.testing.assert_allclose(sigma_b, np.diag([v, 0.0]), atol=1e-12)
    # ||mu_a - mu_b||^2 + (v + v - 2v) + (v + 0 - 0)
    expected = (0.5 - 128 / 255) ** 2 + v
    assert (frechet.frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
            == pytest.approx(expected, abs=1e-6))


# --- the score command --------------------------------------------------------------------------
def save_untrained(folder: Path, tag: str, method: str | None = "sym") -> None:
    """An untrained model as models/m_TAG.pt (a full checkpoint when `method` is given).

    Its weights are scaled up so that its images differ from each other (at the
    default initialisation every exported pixel is 1).
    """
    torch.manual_seed(0)
    model = load_model_class(folder)(4, 8)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    (folder / "models").mkdir(exist_ok=True)
    state = model.state_dict()
    if method is not None:  # the checkpoint a training run would write at count 0
        args = SimpleNamespace(stepsize=1e-4, nan_policy="stop", bs=1, nz0=4, nz1=8)
        data = DeviceData(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), 1.0)
        state = Trainer(model, method, data, RunFiles(folder, tag), args,
                        torch.device("cpu")).state_dict()
    ckpt_io.save(folder / "models" / f"m_{tag}.pt", state)


def projection(dim: int = 6):
    """A small fixed random linear feature map, counting the images it sees."""
    w = torch.randn(3 * 28 * 28, dim, generator=torch.Generator().manual_seed(5))

    def features(x: torch.Tensor) -> torch.Tensor:
        features.seen += len(x)
        return x.flatten(1) @ w
    features.seen = 0
    return features


def png_features(folder: Path, features) -> torch.Tensor:
    """pytorch-fid's route: PNG files -> PIL RGB -> to_tensor -> features."""
    from pytorch_fid.fid_score import ImagePathDataset
    files = sorted(folder.glob("*.png"))
    x = torch.stack([ImagePathDataset(files, TF.ToTensor())[i] for i in range(len(files))])
    return features(x)


def png_statistics(folder: Path, features) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's route, then np.mean, np.cov."""
    f = png_features(folder, features).double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def test_score_command_scores_the_images_generate_data_writes(experiment_copy, data_root,
                                                              monkeypatch, capsys):
    folder = experiment_copy("mnist-ladder")
    save_untrained(folder, "s")
    monkeypatch.chdir(folder)
    common = ["--call_prefix", "s", *NZ, "--n", "20", "--chain_steps", "2", "--bs", "8",
              "--seed", "3", "--data_root", str(data_root), "--device", "cpu"]
    features = projection()
    assert fid.main([*common, "--feature_bs", "7", "--no_progress"], features=features) == 0
    out = capsys.readouterr().out
    assert "| method/tag | random code FID | limiting FID |" in out
    assert features.seen == 3 * 20  # data statistics, random code, limiting
    record = json.loads((folder / "fid_results.json").read_text())[0]
    assert (record["label"], record["method"], record["n"], record["chain_steps"]) == \
        ("sym/s", "sym", 20, 2)
    assert f"| sym/s | {record['random_code_fid']:.4f} | {record['limiting_fid']:.4f} |" in out

    # the same flags give generate_data.py's images: pytorch-fid's route on its PNGs agrees
    from symvae.evaluate.export import main as generate_data
    generate_data(load_model_class(folder), [*common, "--mode", "t", "--workers", "0"])
    sets = folder / "generated_data" / "t"
    data = png_statistics(sets / "images", features)
    for name, key in (("sh_images", "random_code_fid"), ("lim_images", "limiting_fid")):
        expected = frechet.frechet_distance(*png_statistics(sets / name, features), *data)
        assert record[key] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # KID, precision and recall of the same features
    data_feats = png_features(sets / "images", features)
    for name, key in (("sh_images", "random_code"), ("lim_images", "limiting")):
        expected = metrics.set_figures(data_feats, png_features(sets / name, features))
        for figure in ("kid", "kid_se", "precision", "recall"):
            assert record[f"{key}_{figure}"] == pytest.approx(expected[figure], rel=1e-5,
                                                              abs=1e-9), figure
        assert f"| {fid.kid_text(record, key)} |" in (folder / "fid_results.md").read_text()
    assert record["metric_n"] == 20 and "| limiting | " in out

    # a second row reuses the cached data statistics and appends to both results files
    features.seen = 0
    fid.main([*common, "--no_progress"], features=features)
    assert features.seen == 2 * 20
    assert len(list((data_root / "fid_stats").glob("MNIST-bin0.4375-n20-*.npz"))) == 1
    table = (folder / "fid_results.md").read_text().splitlines()
    assert table[0].startswith("| method/tag |") and len(table) == 4
    assert len(json.loads((folder / "fid_results.json").read_text())) == 2
    assert all(line.count("|") == 11 for line in table)

    # a results table of the six-column format gets the new header; its rows stay
    old_head = ("| method/tag | random code FID | limiting FID | n | chain steps | date |\n"
                "| --- | --- | --- | --- | --- | --- |\n")
    old_row = "| sym/x | 1.0000 | 2.0000 | 20 | 2 | 2024-01-01 00:00 UTC |\n"
    (folder / "fid_results.md").write_text(old_head + old_row)
    fid.main([*common, "--no_progress"], features=features)
    table = (folder / "fid_results.md").read_text()
    assert table.startswith(fid.TABLE_HEAD) and old_row in table and len(table.splitlines()) == 4
    # every file these commands wrote is one .gitignore keeps out of git and the tests' copies
    assert unignored_outputs(folder, "mnist-ladder") == []


def test_score_command_refuses_bad_input_with_one_line(experiment_copy, data_root, tmp_path,
                                                       monkeypatch, capsys):
    folder = experiment_copy("mnist-ladder")
    save_untrained(folder, "b", method=None)

    def refused(where: Path, *args: str) -> str:
        monkeypatch.chdir(where)
        with pytest.raises(SystemExit) as stop:
            fid.main(["--call_prefix", "b", *NZ, "--data_root", str(data_root), *args])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        return err

    assert "hvae.py" in refused(tmp_path)
    assert "--n 1" in refused(folder, "--n", "1")
    # no Inception weights at all: a missing model must be named first, without them
    (tmp_path / "empty-torch-home").mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    assert not frechet.weights_path().exists()
    assert "m_nope.pt" in refused(folder, "--call_prefix", "nope")
    (folder / "models" / "m_zero.pt").write_bytes(b"")
    assert "m_zero.pt: not a readable checkpoint" in refused(folder, "--call_prefix", "zero")
    assert "python -m symvae.data fetch inception" in refused(folder)
    (folder / "fid_results.json").write_text("{oops")
    assert "fid_results.json" in refused(folder)


# --- with pytorch-fid's Inception weights ---------------------------------------------------------
needs_weights = pytest.mark.skipif(
    not frechet.weights_path().is_file(),
    reason=f"pytorch-fid's Inception weights are not at {frechet.weights_path()} "
           "(run `python -m symvae.data fetch inception`)")


def pytorch_fid(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "pytorch_fid", "--device", "cpu",
                           "--num-workers", "0", *args], check=True, capture_output=True,
                          text=True, env=env, timeout=600)


def fid_of(proc: subprocess.CompletedProcess) -> float:
    return float(proc.stdout.split("FID:")[-1])


@pytest.mark.slow
@needs_weights
def test_real_inception_identical_sets_near_zero_data_vs_noise_large(tmp_path: Path):
    rng = np.random.default_rng(0)
    from conftest import synthetic_images
    data = torch.from_numpy(synthetic_images(32, 7)).unsqueeze(1).float() / 255
    noise = torch.from_numpy(rng.random((32, 1, 28, 28))).float()
    for name, images in (("a", data), ("b", data), ("noise", noise)):
        (tmp_path / name).mkdir()
        PngWriter(0).write(tmp_path / name, 0, images)
    same = fid_of(pytorch_fid(str(tmp_path / "a"), str(tmp_path / "b")))
    assert abs(same) < 1e-2
    features = frechet.inception_features(torch.device("cpu"))
    stats = [frechet.image_statistics([x], features, bs=32) for x in (data, noise)]
    assert frechet.frechet_distance(*stats[0], *stats[1]) > 100


@pytest.mark.slow
@needs_weights
def test_score_command_agrees_with_pytorch_fid(experiment_copy, tmp_path: Path):
    root = write_dataset(tmp_path / "data", "mnist", n_train=48, n_test=16)
    folder = experiment_copy("mnist-ladder")
    save_untrained(folder, "a")
    common = ["--call_prefix", "a", *NZ, "--n", "64", "--chain_steps", "3", "--bs", "24",
              "--seed", "11", "--data_root", str(root), "--device", "cpu"]
    run_script(folder, "generate_data.py", *common, "--mode", "agree", "--workers", "0")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, "-m", "symvae", "fid", *common, "--no_progress"], cwd=folder,
                   env=env, check=True, capture_output=True, text=True, timeout=600)
    record = json.loads((folder / "fid_results.json").read_text())[-1]
    sets = folder / "generated_data" / "agree"
    stats = str(tmp_path / "data_stats.npz")
    pytorch_fid("--save-stats", str(sets / "images"), stats)
    for name, key in (("sh_images", "random_code_fid"), ("lim_images", "limiting_fid")):
        reference = fid_of(pytorch_fid(stats, str(sets / name)))
        print(f"{key}: score command {record[key]:.6f}, pytorch-fid {reference:.6f}")
        assert record[key] == pytest.approx(reference, abs=1e-3)
