"""Crash-safe checkpoints, exact resume, signals, divergence and hostile input.

Most cases call the entry points in-process (fast, and SystemExit carries the exit status);
the kill -9 and SIGTERM cases run real subprocesses.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_dataset

from symvae.evaluate import export, generate
from symvae.experiment import load_model_class
from symvae.learn import checkpoint as ckpt_io
from symvae.learn import train
from symvae.learn.rules import LEARNERS

HVAE = load_model_class(REPO / "mnist-ladder")
SMALL = ["--nz0", "4", "--nz1", "8", "--bs", "4", "--seed", "0", "--no_progress",
         "--log_period", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches run fastest on one thread: with two, every small op waits for both."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), "mnist")


def make_folder(tmp: Path) -> Path:
    folder = tmp / "mnist-ladder"
    folder.mkdir()
    return folder


def call(entry, folder: Path, *argv: str, monkeypatch) -> int:
    """Run an entry point's main() inside `folder`; returns its exit status."""
    monkeypatch.chdir(folder)
    try:
        return entry(*argv)
    except SystemExit as stop:
        return stop.code


def train_run(folder: Path, data: Path, *argv: str, monkeypatch, method: str = "sym") -> int:
    return call(lambda *a: train.main(HVAE, method, list(a)), folder, *SMALL,
                "--data_root", str(data), *argv, monkeypatch=monkeypatch)


def tree(folder: Path) -> dict[str, str]:
    """Every file's SHA-256, every folder and link, relative to `folder`."""
    def digest(path: Path) -> str:
        if path.is_symlink():
            return f"link to {os.readlink(path)}"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return {str(path.relative_to(folder)): digest(path)
            for path in sorted(folder.rglob("*")) if "__pycache__" not in path.parts}


def count_of(path: Path) -> int:
    return ckpt_io.load(path)["count"]


def log_lines(folder: Path, tag: str) -> list[str]:
    return (folder / "logs" / f"log-{tag}.txt").read_text().splitlines()


# --- hostile and mistaken input ------------------------------------------------------------

class Crafted:
    """A pickle that would create a folder when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """A folder with tag 0 trained 2 iterations and a set of broken model files."""
    folder = make_folder(tmp_path_factory.mktemp("bad"))
    mp = pytest.MonkeyPatch()
    assert train_run(folder, data, "--niterations", "2", monkeypatch=mp) == 0
    mp.undo()
    models = folder / "models"
    (models / "m_1.pt").write_bytes(b"an existing model of tag 1")
    (models / "m_trunc.pt").write_bytes((models / "m_0.pt").read_bytes()[:4096])
    (models / "m_text.pt").write_text("not a checkpoint\n")
    torch.save([1, 2, 3], models / "m_list.pt")
    (models / "m_code.pt").write_bytes(pickle.dumps(Crafted(folder / "pwned")))
    bare = HVAE(4, 8).state_dict()
    torch.save(bare, models / "m_bare.pt")
    torch.save({**bare, "r_a1.weight": torch.zeros(8, 1000)}, models / "m_width.pt")
    torch.save({"enc.weight": torch.zeros(3, 3)}, models / "m_names.pt")
    fake = {"format": ckpt_io.CHECKPOINT_FORMAT, "experiment": "mnist-reverse", "method": "sym",
            "nz0": 4, "nz1": 8, "model": {"w": torch.zeros(1)}, "optimizers": [], "count": 5,
            "means": {}, "sampler": {}, "rng": {}}
    torch.save(fake, models / "m_reverse.pt")
    damaged = ckpt_io.load(models / "m_0.pt")
    del damaged["optimizers"]
    torch.save(damaged, models / "m_damaged.pt")
    return folder


BAD_TRAIN = [
    (["--nz0", "0"], "--nz0 0"),
    (["--nz1", "-3"], "--nz1 -3"),
    (["--nz1", "100000"], "--nz1 100000"),
    (["--bs", "0"], "--bs 0"),
    (["--bs", "10000000"], "--bs 10000000"),
    (["--bs", "1000"], "larger than the data set"),
    (["--stepsize", "0"], "--stepsize 0"),
    (["--stepsize=-1e-4"], "--stepsize -0.0001"),
    (["--stepsize", "nan"], "--stepsize nan"),
    (["--stepsize", "5"], "--stepsize 5"),
    (["--niterations", "0"], "--niterations 0"),
    (["--niterations", "-5"], "--niterations -5"),
    (["--call_prefix", "../x"], "--call_prefix '../x'"),
    (["--call_prefix", "a/b"], "--call_prefix 'a/b'"),
    (["--call_prefix", ".."], "--call_prefix '..'"),
    (["--load_prefix", "../0"], "--load_prefix '../0'"),
    (["--call_prefix", "0"], "m_0.pt already exists"),
    (["--load_prefix", "0", "--call_prefix", "1"], "m_1.pt already exists"),
    (["--load_prefix", "0", "--nz0", "5"], "model has --nz0 4 --nz1 8"),
    (["--load_prefix", "bare", "--call_prefix", "2", "--nz1", "9"], "sizes: --nz0 4 --nz1 8"),
    (["--load_prefix", "nosuch"], "m_nosuch.pt: no such checkpoint"),
    (["--load_prefix", "trunc"], "m_trunc.pt: not a readable checkpoint"),
    (["--load_prefix", "text"], "m_text.pt: not a readable checkpoint"),
    (["--load_prefix", "code"], "m_code.pt: refused, because loading it could run code"),
    (["--load_prefix", "list"], "m_list.pt: holds no model state dict"),
    (["--load_prefix", "names"], "parameter names do not match"),
    (["--load_prefix", "reverse"], "a mnist-reverse checkpoint"),
    (["--load_prefix", "damaged"], "damaged checkpoint (no optimizers)"),
    (["--load_prefix", "width"], "the sizes match, so it is likely from another experiment"),
    (["--load_prefix", "0", "--call_prefix", "0", "--niterations", "1"], "already at count 2"),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the crafted m_code.pt
@pytest.mark.parametrize("argv, message", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_training_input_is_refused_and_writes_nothing(trained, data, argv, message,
                                                          monkeypatch, capsys):
    before = tree(trained)
    assert train_run(trained, data, "--niterations", "3", "--call_prefix", "2", *argv,
                     monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert tree(trained) == before
    assert not (trained / "pwned").exists()


@pytest.mark.parametrize("entry", [generate.main, export.main])
def test_generate_scripts_refuse_a_tag_without_model(trained, data, entry, monkeypatch, capsys):
    before = tree(trained)
    argv = ["--call_prefix", "nosuch", "--nz0", "4", "--nz1", "8"]
    if entry is export.main:
        argv += ["--mode", "sym", "--data_root", str(data)]
    assert call(lambda *a: entry(HVAE, list(a)), trained, *argv, monkeypatch=monkeypatch) == 2
    assert "m_nosuch.pt: no such checkpoint" in capsys.readouterr().err
    assert tree(trained) == before


def test_unwritable_output_folder_is_refused(trained, data, tmp_path, monkeypatch, capsys):
    # a file where a folder belongs stops root too, unlike permissions
    fresh = make_folder(tmp_path)
    (fresh / "models").write_text("")
    before = tree(fresh)
    assert train_run(fresh, data, "--niterations", "1", monkeypatch=monkeypatch) == 2
    assert "models is a file" in capsys.readouterr().err
    assert tree(fresh) == before

    (trained / "generated_data").write_text("")
    try:
        before = tree(trained)
        argv = ["--call_prefix", "0", "--nz0", "4", "--nz1", "8", "--mode", "sym", "--n", "4",
                "--data_root", str(data)]
        assert call(lambda *a: export.main(HVAE, list(a)), trained, *argv,
                    monkeypatch=monkeypatch) == 2
        assert "generated_data is a file" in capsys.readouterr().err
        assert tree(trained) == before
    finally:
        (trained / "generated_data").unlink()


def test_script_exits_non_zero_with_one_line(trained):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    before = tree(trained)
    proc = subprocess.run([sys.executable, str(REPO / "mnist-ladder" / "generate.py"),
                           "--call_prefix", "nosuch"], check=False, cwd=trained, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "m_nosuch.pt: no such checkpoint" in proc.stderr
    assert tree(trained) == before


# --- resume ------------------------------------------------------------------------------

def test_resume_is_bit_identical(data, tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    common = ["--save_period", "4", "--log_period", "1"]
    assert train_run(folder, data, *common, "--call_prefix", "a", "--niterations", "6",
                     monkeypatch=monkeypatch) == 0
    assert train_run(folder, data, *common, "--call_prefix", "b", "--niterations", "3",
                     monkeypatch=monkeypatch) == 0
    assert count_of(folder / "models" / "m_b.pt") == 3
    assert train_run(folder, data, *common, "--call_prefix", "b", "--load_prefix", "b",
                     "--niterations", "6", monkeypatch=monkeypatch) == 0
    a, b = (ckpt_io.load(folder / "models" / f"m_{t}.pt") for t in "ab")
    assert a["count"] == b["count"] == 6
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for opt_a, opt_b in zip(a["optimizers"], b["optimizers"], strict=True):
        for key, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][key][name]), (key, name)

    def values(tag):  # the log lines without the wall-clock time
        return [line.split(" ", 2)[2] for line in log_lines(folder, tag) if line.startswith("t")]
    assert values("a") == values("b")
    assert f"# resumed from {folder / 'models' / 'm_b.pt'} at count 3" in log_lines(folder, "b")


def test_weights_only_file_loads(data, tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    (folder / "models").mkdir()
    torch.manual_seed(123)
    bare = HVAE(4, 8).state_dict()
    torch.save(bare, folder / "models" / "m_w.pt")
    torch.save(bare, folder / "models" / "m_g.pt")

    assert train_run(folder, data, "--load_prefix", "w", "--call_prefix", "w", "--niterations",
                     "2", monkeypatch=monkeypatch) == 0
    assert any(line.startswith("# started from bare weights") for line in log_lines(folder, "w"))
    ckpt = ckpt_io.load(folder / "models" / "m_w.pt")
    assert ckpt["format"] == ckpt_io.CHECKPOINT_FORMAT and ckpt["count"] == 2
    # two Adam steps of 1e-4 move each weight by at most ~2e-4; a fresh init differs far more
    drift = max(float((ckpt["model"][n] - t).abs().max()) for n, t in bare.items())
    assert drift < 1e-3

    argv = ["--call_prefix", "g", "--nz0", "4", "--nz1", "8", "--n", "10", "--chain_steps", "2"]
    assert call(lambda *a: generate.main(HVAE, list(a)), folder, *argv,
                monkeypatch=monkeypatch) == 0
    assert (folder / "images" / "generated_sta_g.png").stat().st_size > 0


# --- divergence ----------------------------------------------------------------------------

def poison_q_loss(monkeypatch, on_calls: set[int], before=None) -> None:
    """Make -log q(z0|x) NaN on the given calls (1-based) of nll_q, i.e. those iterations."""
    real, calls = HVAE.nll_q, []

    def nll_q(self, z, x):
        calls.append(1)
        loss, logs = real(self, z, x)
        if len(calls) in on_calls:
            if before:
                before()
            logs = {**logs, "qloss0": logs["qloss0"] * float("nan")}
        return loss, logs
    monkeypatch.setattr(HVAE, "nll_q", nll_q)


def test_nan_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path)
    model_file = folder / "models" / "m_0.pt"
    seen = {}
    poison_q_loss(monkeypatch, {3}, before=lambda: seen.update(hash=tree(folder)["models/m_0.pt"]))
    assert train_run(folder, data, "--niterations", "10", "--save_period", "2",
                     monkeypatch=monkeypatch) == 3
    err = capsys.readouterr().err
    assert "non-finite qloss0 at iteration 3" in err and "last good checkpoint" in err
    assert tree(folder)["models/m_0.pt"] == seen["hash"]
    assert count_of(model_file) == 2
    assert log_lines(folder, "0")[-1].startswith("# stopped: non-finite qloss0 at iteration 3")


def test_nan_skip_policy_continues(data, tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    poison_q_loss(monkeypatch, {3})
    assert train_run(folder, data, "--niterations", "5", "--save_period", "2", "--nan_policy",
                     "skip", monkeypatch=monkeypatch) == 0
    assert "# skipped a batch at count 2: non-finite qloss0" in log_lines(folder, "0")
    ckpt = ckpt_io.load(folder / "models" / "m_0.pt")
    assert ckpt["count"] == 5
    assert all(bool(t.isfinite().all()) for t in ckpt["model"].values())


def test_non_finite_weights_are_never_saved(data, tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path)
    real, calls = LEARNERS["sym"].step, []

    def step(self, x):  # a finite loss whose update leaves a NaN weight at iteration 4
        out = real(self, x)
        calls.append(1)
        if len(calls) == 4:
            next(self.model.p_x.parameters()).data[0] = float("nan")
        return out
    monkeypatch.setattr(LEARNERS["sym"], "step", step)
    assert train_run(folder, data, "--niterations", "10", "--save_period", "2",
                     monkeypatch=monkeypatch) == 3
    assert "non-finite parameters at count 4" in capsys.readouterr().err
    assert count_of(folder / "models" / "m_0.pt") == 2


# --- signals and kill -9 -----------------------------------------------------------------

def test_second_sigint_exits_at_once(data, tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path)
    real = train.Trainer.iteration

    def iteration(self):
        if self.count == 2:
            os.kill(os.getpid(), signal.SIGINT)
            while not self.stop_signal:  # two signals at once could merge into one
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the handler exits during this
        real(self)
    monkeypatch.setattr(train.Trainer, "iteration", iteration)
    handler = signal.getsignal(signal.SIGINT)
    assert train_run(folder, data, "--niterations", "10", "--save_period", "100",
                     monkeypatch=monkeypatch) == 130
    assert "SIGINT again: exiting without saving" in capsys.readouterr().err
    assert count_of(folder / "models" / "m_0.pt") == 0
    assert signal.getsignal(signal.SIGINT) is handler  # main() put the caller's handler back


def start(folder: Path, data: Path, *argv: str, script: tuple[str, ...] = ("main_sym.py",)
          ) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *script, *SMALL, "--data_root", str(data), *argv],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_count(proc: subprocess.Popen, folder: Path, tag: str, count: int) -> None:
    """Wait until the log shows `count`, after the last '#' line (i.e. in this run)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = folder / "logs" / f"log-{tag}.txt"
        lines = log.read_text().splitlines() if log.exists() else []
        last = max([i for i, line in enumerate(lines) if line.startswith("#")], default=len(lines))
        if any(f" count: {count} " in line for line in lines[last:]):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no count {count} in the log: {proc.communicate()}")


def copy_scripts(folder: Path) -> None:
    for name in ("main_sym.py", "hvae.py", "mnist.py"):
        (folder / name).write_text((REPO / "mnist-ladder" / name).read_text())


def test_sigterm_saves_and_resumes(data, tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    copy_scripts(folder)
    proc = start(folder, data, "--call_prefix", "t", "--save_period", "1000")
    wait_for_count(proc, folder, "t", 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    count = count_of(folder / "models" / "m_t.pt")
    assert count >= 2
    assert f"SIGTERM: checkpoint saved at count {count}" in err
    assert f"# stopped by SIGTERM at count {count}; checkpoint saved" in log_lines(folder, "t")
    assert train_run(folder, data, "--call_prefix", "t", "--load_prefix", "t", "--niterations",
                     str(count + 2), "--stepsize", "5e-5", monkeypatch=monkeypatch) == 0
    ckpt = ckpt_io.load(folder / "models" / "m_t.pt")
    assert ckpt["count"] == count + 2
    assert {g["lr"] for opt in ckpt["optimizers"] for g in opt["param_groups"]} == {5e-5}
    lines = log_lines(folder, "t")
    assert f"at count {count}; --stepsize 0.0001 -> 5e-05" in lines[-4]
    assert f" count: {count + 2} " in lines[-2]


# Runs main_sym.py and dies by SIGKILL inside the AT-th checkpoint save: halfway through
# writing the temporary file ("write") or after it is complete but before the rename ("rename").
KILLER = """
import os, signal, sys, runpy
import symvae.learn.checkpoint as ckpt_io
mode, at = sys.argv[1], int(sys.argv[2])
sys.argv = ["main_sym.py", *sys.argv[3:]]
sys.path.insert(0, os.getcwd())
real_write, real_replace, calls = ckpt_io.atomic_write, os.replace, [0]

def atomic_write(path, write):
    if not str(path).endswith(".pt"):
        return real_write(path, write)
    calls[0] += 1

    def halfway(f):
        write(f)
        if mode == "write" and calls[0] == at:
            f.truncate(f.tell() // 2)
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, halfway)

def replace(src, dst):
    if mode == "rename" and str(dst).endswith(".pt") and calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

ckpt_io.atomic_write, os.replace = atomic_write, replace
runpy.run_path("main_sym.py", run_name="__main__")
"""


def test_kill_9_during_and_between_saves_then_resume(data, tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    copy_scripts(folder)
    (folder / "killer.py").write_text(KILLER)
    model_file = folder / "models" / "m_k.pt"
    run = ["--call_prefix", "k", "--save_period", "1", "--niterations", "1000"]
    resume = [*run, "--load_prefix", "k"]

    # saves at counts 0, 1, 2: die halfway through writing the third
    proc = start(folder, data, *run, script=("killer.py", "write", "3"))
    assert proc.communicate(timeout=300) and proc.returncode == -signal.SIGKILL, proc.stderr
    assert count_of(model_file) == 1

    # resumed, saves at counts 2, 3: die with the third complete but not yet renamed
    proc = start(folder, data, *resume, script=("killer.py", "rename", "2"))
    assert proc.communicate(timeout=300) and proc.returncode == -signal.SIGKILL
    assert count_of(model_file) == 2

    # resumed, saves every 2: kill -9 at a random moment while it trains and saves
    proc = start(folder, data, *resume, "--save_period", "2")
    wait_for_count(proc, folder, "k", 5)  # so the save at count 4 is complete
    time.sleep(random.uniform(0, 1))
    proc.kill()
    proc.communicate(timeout=300)
    count = count_of(model_file)
    assert count >= 4 and count % 2 == 0

    with open(folder / "logs" / "log-k.txt", "a") as log:
        log.write("time: 9.9 cou")  # as if a crash had cut the last line short
    assert train_run(folder, data, *resume, "--niterations", str(count + 2),
                     monkeypatch=monkeypatch) == 0
    assert count_of(model_file) == count + 2
    assert not list(folder.glob("models/.m_k.pt.tmp*"))  # a killed save's leftovers are gone
    lines = log_lines(folder, "k")
    assert [line for line in lines if line.startswith("# resumed")] == [
        f"# resumed from {model_file} at count {c}" for c in (1, 2, count)]
    assert all(line.startswith(("#", "time: ")) and "#" not in line[1:] for line in lines)
