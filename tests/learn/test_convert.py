"""The authors' checkpoints <-> ours: name maps, round trips, the command, and our tools on them."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_script
from experiment_runs import TINY, TINY_NZ0, TINY_NZ1

from symvae.experiment import EXPERIMENTS, load_model_class
from symvae.learn import checkpoint as ckpt_io
from symvae.learn.authors_format import from_authors, to_authors
from symvae.learn.stats import bit_trackers


def their_names(experiment: str) -> set[str]:
    """The authors' state-dict keys, written out from their network classes."""
    def layers(net, names, bias=True):
        return {f"{net}.{n}.{k}" for n in names for k in (("weight", "bias") if bias else
                                                           ("weight",))}
    mlp, convs = ("lin1", "lin2", "lin3"), [f"conv{i}" for i in range(1, 8)]
    trunk = [f"conv{i}" for i in range(7)] + ["conv_z1"]
    if experiment == "mnist-reverse":
        return (layers("pnet01", mlp) | layers("pnet01", ["lin_skip"], False)
                | layers("pnet1x", convs) | layers("qnetx1", trunk)
                | layers("qnet10", ["conv_z1", *mlp]) | layers("qnet10", ["lin_skip"], False)
                | {"dummy_param"})
    names = (layers("fnet01", mlp) | layers("fnet01", ["lin_skip"], False)
             | layers("fnet1x", convs) | layers("rnet", trunk + list(mlp))
             | layers("rnet", ["lin_skip"], False)
             | {"z0_q", "z0_q_mi", "z1_p", "z1_p_mi", "z1_q", "z1_q_mi"})
    return names | {"lsigma"} if experiment == "fmnist-ladder" else names


def trained_state(experiment: str, seed: int = 0):
    """A model with random weights and MI statistics gathered from random logits."""
    torch.manual_seed(seed)
    model = load_model_class(experiment)(TINY_NZ0, TINY_NZ1)
    for p in model.parameters():  # move log sigma and the biases off their initial values
        p.data.add_(0.01 * torch.randn_like(p))
    mi = {}
    for group, tracker in bit_trackers(model.mi_names, TINY_NZ0, TINY_NZ1).items():
        for _ in range(3):
            tracker.update(torch.randn(8, len(tracker.m)))
        mi[group] = tracker.state_dict()
    return model, mi


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_round_trips_are_the_identity_and_use_the_authors_names(experiment):
    model, mi = trained_state(experiment)
    theirs = to_authors(model.state_dict(), mi, experiment)
    assert set(theirs) == their_names(experiment)
    back, back_mi = from_authors(theirs)
    assert same(back, model.state_dict())
    assert set(back_mi) == set(mi) and all(same(back_mi[g], mi[g]) for g in mi)
    assert same(to_authors(back, back_mi, experiment), theirs)


def test_the_skip_layers_and_statistics_land_where_the_authors_keep_them():
    model, mi = trained_state("mnist-ladder")
    theirs = to_authors(model.state_dict(), mi, "mnist-ladder")
    assert torch.equal(theirs["rnet.lin_skip.weight"], model.r_a0_skip.weight)
    assert torch.equal(theirs["rnet.conv_z1.bias"], model.r_a1.bias)
    assert torch.equal(theirs["fnet1x.conv7.weight"], model.p_x[-1].weight)
    assert torch.equal(theirs["z0_q_mi"], mi["q0"]["mi"])
    fresh = to_authors(model.state_dict(), None, "mnist-ladder")  # the authors' starting values
    assert torch.equal(fresh["z1_p"], torch.full((TINY_NZ1,), 0.5))
    assert torch.equal(fresh["z1_q_mi"], torch.zeros(TINY_NZ1))


def test_a_file_of_another_experiment_is_refused_by_name():
    model, mi = trained_state("mnist-ladder")
    theirs = to_authors(model.state_dict(), mi, "mnist-ladder")
    with pytest.raises(ckpt_io.CheckpointError, match="mnist-ladder checkpoint, not mnist-rev"):
        from_authors(theirs, "mnist-reverse")


def convert(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "symvae", "convert", *map(str, args)], check=False,
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_command_converts_both_ways_and_refuses_mistakes_in_one_line(tmp_path):
    model, _ = trained_state("mnist-reverse")
    ours = tmp_path / "m_ours.pt"
    ckpt_io.save(ours, model.state_dict())
    theirs, back = tmp_path / "m_theirs.pt", tmp_path / "m_back.pt"
    proc = convert("--to", "authors", ours, theirs)  # a bare file does not say its experiment
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--experiment" in proc.stderr
    assert not theirs.exists()
    assert convert("--to", "authors", ours, theirs, "--experiment", "mnist-reverse").returncode == 0
    assert set(torch.load(theirs)) == their_names("mnist-reverse")
    proc = convert("--to", "authors", theirs, back)
    assert proc.returncode == 2 and "use --to symvae" in proc.stderr
    assert convert("--to", "symvae", theirs, back).returncode == 0
    assert same(torch.load(back), model.state_dict())
    before = back.read_bytes()
    proc = convert("--to", "symvae", theirs, back)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and back.read_bytes() == before
    proc = convert("--to", "symvae", tmp_path / "none.pt", tmp_path / "x.pt")
    assert (proc.returncode == 2 and proc.stderr.startswith("error: ")
            and "Traceback" not in proc.stderr)


def test_an_authors_file_generates_and_resumes_with_its_statistics(experiment_copy, data_root):
    folder = experiment_copy("mnist-ladder")
    (folder / "models").mkdir()
    model, mi = trained_state("mnist-ladder")
    mi["p1"]["mi"] = torch.full((TINY_NZ1,), 2.0)  # above log 2: only a carried value is here
    torch.save(to_authors(model.state_dict(), mi, "mnist-ladder"), folder / "models" / "m_a.pt")

    proc = run_script(folder, "generate.py", "--call_prefix", "a", *TINY, "--n", "10",
                      "--chain_steps", "2", "--device", "cpu")
    assert "an authors' mnist-ladder checkpoint, converted" in proc.stderr
    assert (folder / "images" / "generated_sta_a.png").is_file()

    proc = run_script(folder, "main_sym.py", "--call_prefix", "b", "--load_prefix", "a", *TINY,
                      "--bs", "8", "--niterations", "1", "--data_root", str(data_root),
                      "--device", "cpu", "--no_progress")
    log = (folder / "logs" / "log-b.txt").read_text()
    assert "started from the authors' weights (converted)" in log and "MI statistics" in log
    ckpt = ckpt_io.load(folder / "models" / "m_b.pt")
    assert ckpt["mi"]["p1"]["mi"].min() > 1.9  # 0.99 * 2.0 + 0.01 * (at most log 2)
    assert (ckpt["mi"]["q0"]["m"] - mi["q0"]["m"]).abs().max() <= 0.01  # one step of decay 0.99


def test_our_loader_names_the_folder_an_authors_file_belongs_to(tmp_path):
    model, mi = trained_state("mnist-ladder")
    path = tmp_path / "m_l.pt"
    torch.save(to_authors(model.state_dict(), mi, "mnist-ladder"), path)
    ckpt = ckpt_io.load(path)
    reverse = load_model_class("mnist-reverse")(TINY_NZ0, TINY_NZ1)
    with pytest.raises(ckpt_io.CheckpointError, match="use it in the mnist-ladder folder"):
        ckpt_io.check_compatible(ckpt, path, reverse, "mnist-reverse", TINY_NZ0, TINY_NZ1)
    ckpt = ckpt_io.load(path)
    ckpt_io.check_compatible(ckpt, path, model, "mnist-ladder", TINY_NZ0, TINY_NZ1)
    assert ckpt["authors"] and same(ckpt["model"], model.state_dict())


def test_crosscheck_without_the_authors_code_says_so_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "symvae", "crosscheck", "--ref", str(tmp_path)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "--ref" in proc.stderr
    assert proc.stderr.count("\n") == 1
