"""The prepared GPU check: what travels to the GPU machine, and the script's CPU dry run."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from symvae.data import fetch, raw
from symvae.evaluate.frechet import weights_path
from symvae.reproduce import gpu_assets, gpu_check

REPO = Path(__file__).resolve().parents[2]


def fake_weights(path: Path, fc: float = 0.0) -> dict:
    state = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3),
             "Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(7),
             "fc.weight": torch.full((1008, 2048), fc), "fc.bias": torch.zeros(1008)}
    torch.save(state, path)
    return state


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pack_is_reproducible_and_unpacks_to_the_same_files(tmp_path, data_root, monkeypatch):
    raw = data_root / "MNIST" / "raw"
    monkeypatch.setitem(fetch.MD5, "mnist", {f: fetch.md5_file(raw / f) for f in fetch.FILES})
    state = fake_weights(tmp_path / "w.pth")
    wheel = tmp_path / "pytorch_fid-0.3.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    packs = []
    for name in ("a", "b"):
        gpu_assets.pack(tmp_path / name, data_root, tmp_path / "w.pth", wheel)
        packs.append(tree(tmp_path / name))
    assert packs[0] == packs[1] and "inception-fp16.pt" in packs[0]
    assert "wheels/pytorch_fid-0.3.0-py3-none-any.whl" in packs[0]

    gpu_assets.unpack(tmp_path / "a", tmp_path / "there")
    for f in fetch.FILES:
        assert (tmp_path / "there/data/MNIST/raw" / f).read_bytes() == (raw / f).read_bytes()
    full = torch.load(tmp_path / "there/torch/hub/checkpoints" / gpu_assets.WEIGHTS_FILE)
    assert (tmp_path / "there/torch/hub/checkpoints" / gpu_assets.ORIGIN_NOTE).is_file()
    assert full.keys() == state.keys()
    for name, value in state.items():
        want = value.half().float() if value.is_floating_point() else value
        assert full[name].dtype == value.dtype and torch.equal(full[name], want), name


def test_unpack_refuses_changed_data(tmp_path, data_root, monkeypatch):
    raw = data_root / "MNIST" / "raw"
    monkeypatch.setitem(fetch.MD5, "mnist", {f: fetch.md5_file(raw / f) for f in fetch.FILES})
    fake_weights(tmp_path / "w.pth")
    wheel = tmp_path / "pytorch_fid-0.3.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    gpu_assets.pack(tmp_path / "a", data_root, tmp_path / "w.pth", wheel)
    gpu_assets.gzip_file(raw / fetch.FILES[1], tmp_path / "a/data/MNIST/raw" /
                         f"{fetch.FILES[0]}.gz")
    with pytest.raises(SystemExit):
        gpu_assets.unpack(tmp_path / "a", tmp_path / "there")


def test_weights_with_a_nonzero_fc_are_not_halved(tmp_path):
    fake_weights(tmp_path / "w.pth", fc=1.0)
    with pytest.raises(ValueError, match="fc.weight is not zero"):
        gpu_assets.halve(tmp_path / "w.pth", tmp_path / "half.pt")


def test_iterations_fit_the_time_left_up_to_the_seed_run():
    sizes = gpu_check.FULL
    assert gpu_check.plan_iterations(150.0, 0.003, sizes) == 45000  # 150 s / 3.3 ms
    assert gpu_check.plan_iterations(10_000.0, 0.001, sizes) == 200_000
    assert gpu_check.plan_iterations(1.0, 0.01, sizes) == sizes["min_iterations"]


def test_a_score_that_cannot_finish_is_skipped():
    """As in the second H200 call: 60 s left, 25 s of fixed costs, 2.56 ms per image."""
    sizes = gpu_check.FULL
    assert gpu_check.plan_images(60.0, 25.0, 0.00256, 1, sizes) == 6000  # 25 s / 3.84 ms
    assert gpu_check.plan_images(60.0, 25.0, 0.00256, 2, sizes) == 0  # -5 s each: skip
    assert gpu_check.plan_images(1e5, 25.0, 0.00256, 1, sizes) == 70_000
    assert gpu_check.plan_images(38.0, 25.0, 0.00256, 1, sizes) == 0  # 781 < 1000 images


@pytest.mark.slow
@pytest.mark.skipif(not weights_path().is_file(), reason="pytorch-fid's Inception weights")
@pytest.mark.skipif(not (raw.default_data_root() / "MNIST" / "raw" / fetch.FILES[0]).is_file(),
                    reason="MNIST (make setup)")
def test_the_gpu_script_dry_run_on_the_cpu(tmp_path):
    """scripts/gpu_check.sh end to end at tiny sizes, from a real packed .gpu/ as it travels
    (pytorch-fid's wheel installed offline from it, MNIST and the fp16 weights unpacked); the
    authors' code too when SYMVAE_AUTHORS names their checkout."""
    assets = tmp_path / "gpu"
    gpu_assets.pack(assets, raw.default_data_root(), weights_path(), None)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("SYMVAE_DATA", "TORCH_HOME")}
    env.update(SYMVAE_GPU_ASSETS=str(assets), OMP_NUM_THREADS="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(out), "--device", "cpu",
                           "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "gpu_check.md").read_text()
    assert "## 1. Speed" in report and "## 3. Summary" in report
    rows = [line for line in report.splitlines() if line.startswith(("| sym |", "| elbo |"))]
    assert len(rows) == 4  # speed and summary, both methods
    summary = rows[2:]
    for row in summary:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == str(gpu_check.DRY["min_iterations"])
        assert all(float(c) >= 0 for c in cells[6:8])  # both FIDs were computed
    assert {p.name for p in out.iterdir()} == {
        "gpu_check.md", "gpu_check.json", "gpu_check.log", "train_logs.txt",
        "m_sym.pt", "m_elbo.pt", "img_sym.png", "img_elbo.png"}
    weights = torch.load(out / "m_sym.pt")
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    assert "## 0. Preflight" in report and "fixed costs:" in report
    assert "stored as fp16, widened to fp32" in report  # the travelled weights were used
    if os.environ.get("SYMVAE_AUTHORS"):
        assert "x |" in rows[0]


def test_the_gpu_script_refuses_without_its_assets_on_a_gpu_machine(tmp_path):
    env = dict(os.environ, SYMVAE_GPU_ASSETS=str(tmp_path / "none"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "make gpu-assets" in proc.stderr
