"""mnist-ladder end to end: the seed's command lines on small synthetic data, and real learning."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from symvae.checkpoint import load
from symvae.cli import seed_everything
from symvae.data import default_data_root
from symvae.experiment import load_model_class

TRAIN = ("--nz0", "6", "--nz1", "10", "--bs", "16", "--niterations", "12", "--log_period", "4",
         "--save_period", "8", "--device", "cpu", "--seed", "0")
SYM_NAMES = ["ploss1", "plossx", "qloss0", "qloss1", "pmi1", "qmi0", "qmi1"]
ELBO_NAMES = ["dloss", "kl0loss", "kl1loss", "pmi1", "qmi0", "qmi1"]


def parse_log(path: Path) -> list[dict[str, float]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        words = line.split()
        assert all(w.endswith(":") for w in words[::2]), line
        rows.append({w[:-1]: float(v) for w, v in zip(words[::2], words[1::2])})
    return rows


@pytest.mark.parametrize("script,tag,names", [("main_sym.py", "0", SYM_NAMES),
                                              ("main_elbo.py", "1", ELBO_NAMES)])
def test_training_writes_every_output(experiment_copy, data_root, script, tag, names):
    folder = experiment_copy("mnist-ladder")
    run_script(folder, script, "--call_prefix", tag, "--data_root", str(data_root), *TRAIN)
    rows = parse_log(folder / "logs" / f"log-{tag}.txt")
    assert [r["count"] for r in rows] == [4, 8, 12]
    assert list(rows[0]) == ["time", "count", "len", *names]
    assert all(np.isfinite(list(r.values())).all() for r in rows)
    for group in ("p1", "q0", "q1"):
        values = [float(v) for v in (folder / "logs" / f"stat{group}-{tag}.txt").read_text().split()]
        assert len(values) == {"p1": 10, "q0": 6, "q1": 10}[group]
        assert values == sorted(values, reverse=True)
    grid = Image.open(folder / "images" / f"img_{tag}.png")
    assert grid.size == (2 + 10 * 30, 2 + 4 * 30)  # 4 rows of 10 images of 28 px, 2 px padding
    ckpt = load(folder / "models" / f"m_{tag}.pt")
    assert ckpt["count"] == 12 and ckpt["nz0"] == 6 and ckpt["experiment"] == "mnist-ladder"


def test_generate_and_generate_data(experiment_copy, data_root):
    folder = experiment_copy("mnist-ladder")
    run_script(folder, "main_sym.py", "--call_prefix", "g", "--data_root", str(data_root), *TRAIN)
    run_script(folder, "generate.py", "--call_prefix", "g", "--nz0", "6", "--nz1", "10",
               "--chain_steps", "3", "--device", "cpu")
    for kind in ("sh", "sta"):
        img = Image.open(folder / "images" / f"generated_{kind}_g.png")
        assert img.size == (302, 122)  # 4 x 10 grid
    run_script(folder, "generate_data.py", "--call_prefix", "g", "--mode", "sym", "--nz0", "6",
               "--nz1", "10", "--n", "20", "--chain_steps", "3", "--bs", "8",
               "--data_root", str(data_root), "--device", "cpu", "--workers", "2")
    out = folder / "generated_data" / "sym"
    for name in ("images", "sh_images", "lim_images"):
        files = sorted((out / name).iterdir())
        assert [f.name for f in files] == [f"img_{i:05d}.png" for i in range(20)]
        pixels = np.stack([np.asarray(Image.open(f)) for f in files])
        assert pixels.shape == (20, 28, 28) and pixels.dtype == np.uint8
        assert set(np.unique(pixels)) <= {0, 255}  # binary experiment: thresholded images
    for name in ("prior_z", "posterior_z", "limiting_z"):
        codes = np.load(out / f"{name}.npy")
        assert codes.shape == (20, 16) and set(np.unique(codes)) <= {0, 1}


def real_data_root() -> Path:
    return Path(os.environ.get("SYMVAE_TEST_DATA") or default_data_root())


@pytest.mark.slow
def test_short_real_mnist_run_lowers_the_pixel_loss(experiment_copy):
    """A few hundred small-batch iterations on real MNIST clearly lower -log p(x|z1)."""
    folder = experiment_copy("mnist-ladder")
    run_script(folder, "main_sym.py", "--call_prefix", "r", "--data_root", str(real_data_root()),
               "--bs", "32", "--niterations", "200", "--stepsize", "1e-3", "--seed", "0",
               "--device", "cpu", "--no_progress")
    hvae = load_model_class(folder)
    data = hvae.dataset.load(real_data_root(), torch.device("cpu"))
    x = data.as_float(data.images[:256])

    def pixel_loss(model) -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            z, _ = model.sample_q(x)
            return model.nll_p(z, x)[1]["plossx"].item()

    seed_everything(0)
    initial = hvae(30, 100)  # the same start as the run's (same seed, same construction)
    trained = hvae(30, 100)
    trained.load_state_dict(load(folder / "models" / "m_r.pt")["model"])
    before, after = pixel_loss(initial), pixel_loss(trained)
    assert after < 0.6 * before, (before, after)
