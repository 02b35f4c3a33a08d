"""pretrained/: the weights kept from a GPU run load into generate.py as docs/results-gpu.md
says."""
from __future__ import annotations

import shutil

import torch
from conftest import REPO, run_script

from symvae.experiment import load_model_class

WEIGHTS = REPO / "pretrained" / "mnist-ladder-sym-6k.pt"


def test_the_pretrained_symmetric_model_generates(experiment_copy):
    state = torch.load(WEIGHTS, map_location="cpu")
    model = load_model_class("mnist-ladder")(30, 100)
    model.load_state_dict(state)  # fp16 in the file, widened on load
    assert all(p.dtype == torch.float32 for p in model.parameters())
    folder = experiment_copy("mnist-ladder")
    (folder / "models").mkdir()
    shutil.copy(WEIGHTS, folder / "models" / "m_gpu6k.pt")
    run_script(folder, "generate.py", "--call_prefix", "gpu6k", "--nz0", "30", "--nz1", "100",
               "--chain_steps", "2", "--device", "cpu")
    for kind in ("sh", "sta"):
        assert (folder / "images" / f"generated_{kind}_gpu6k.png").stat().st_size > 1000
