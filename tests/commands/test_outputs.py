"""Tests never see a user's outputs, and every output a run writes is in .gitignore.

A user who followed the README has models, logs, image sets and fid_results.* in the experiment
folders; the suite's copies of those folders must hold the sources only.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, copy_sources, source_files, unignored_outputs

# What the README's commands write inside mnist-ladder: training, generate.py, generate_data.py
# (with its staging folder and lock), python -m symvae fid, python -m symvae plot, Jupyter,
# and a results/ folder of python -m symvae reproduce --out results run from here.
USER_OUTPUTS = (
    "fid_results.md", "fid_results.json",
    "models/m_0.pt", "models/.m_0.lock", "models/.m_0.pt.tmp4242",
    "logs/log-0.txt", "logs/statq0-0.txt",
    "images/img_0.png", "images/generated_sh_0.png", "images/plot_losses_0-1.png",
    "generated_data/sym/images/img_00000.png", "generated_data/sym/z0_prior.npy",
    "generated_data/sym/produced_by.json", "generated_data/.elbo.partial/images/img_00000.png",
    "generated_data/.sym.lock",
    "__pycache__/hvae.cpython-312.pyc", ".ipynb_checkpoints/plot_sym-checkpoint.ipynb",
    "results/quick/table.md",
)


def user_checkout(tmp_path: Path, git: bool) -> Path:
    """A checkout (a git one if `git`) whose mnist-ladder holds its sources, a new source file
    not yet added, and one of every output a user's runs write."""
    root = tmp_path / "checkout"
    copy_sources(REPO / "mnist-ladder", root / "mnist-ladder")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    (root / "mnist-ladder" / "extra.py").write_text("NEW = 1\n")
    for name in USER_OUTPUTS:
        path = root / "mnist-ladder" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a user's output")
    return root


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_experiment_copy_leaves_out_every_user_output(experiment_copy, tmp_path, git):
    root = user_checkout(tmp_path, git)
    copy = experiment_copy("mnist-ladder", source=root)
    copied = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert copied == sorted([*source_files(REPO / "mnist-ladder"), "extra.py"])
    assert not any(name in copied for name in USER_OUTPUTS)


def test_user_outputs_stay_out_of_git_status(tmp_path):
    root = user_checkout(tmp_path, git=True)
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert [line for line in status if not line.startswith("A ")] == ["?? mnist-ladder/extra.py"]


def test_unignored_outputs_names_an_output_gitignore_misses(experiment_copy):
    copy = experiment_copy("mnist-ladder")
    (copy / "models").mkdir()
    (copy / "models" / "m_0.pt").write_bytes(b"x")
    (copy / "stray_output.csv").write_text("1\n")
    assert unignored_outputs(copy, "mnist-ladder") == ["stray_output.csv"]
