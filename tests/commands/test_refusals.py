"""Every refusal and failure of the commands, one table: command, exit status, the one line.

Each case runs in a fresh copy of a small workspace (a mnist-ladder folder with a symmetric
run `0` and an ELBO run `e`, 2 iterations each, and a synthetic data root) and asserts the
exit status, that stderr's first line holds the expected words and is the only error line,
no traceback, and that every file that existed before is unchanged. docs/long-runs.md
("Refusals") lists what these cases pin.
"""
from __future__ import annotations

import errno
import gzip
import json
import math
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_dataset
from test_reliability import HVAE, SMALL, Crafted, one_thread, tree  # noqa: F401 - a fixture

from symvae import cli, entry, ground
from symvae.data.datasets import Dataset
from symvae.evaluate import export, fid, frechet, generate, plot
from symvae.learn import checkpoint as ckpt_io
from symvae.learn import convert, train
from symvae.learn.lock import Busy, RunLock
from symvae.reproduce import runner as reproduce

NZ = ("--nz0", "4", "--nz1", "8")
Setup = Callable[[Path, Path, pytest.MonkeyPatch], None]  # (experiment folder, data root, mp)


@dataclass
class Case:
    name: str
    command: tuple[str, ...]  # entry script, then its flags (common sizes are added)
    code: int
    line: str  # words the first line of stderr holds
    setup: Setup | None = None
    not_in_line: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()  # files of the workspace the command may change
    lines: int = 1  # lines on stderr


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The workspace every case copies: data/ and mnist-ladder/ with runs 0 (sym) and e (elbo)."""
    root = tmp_path_factory.mktemp("template")
    write_dataset(root / "data", "mnist")
    folder = root / "mnist-ladder"
    folder.mkdir()
    for name in ("hvae.py", "mnist.py"):
        shutil.copy(REPO / "mnist-ladder" / name, folder)
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    for tag, method in (("0", "sym"), ("e", "elbo")):
        assert train.main(HVAE, method, [*SMALL, "--data_root", str(root / "data"),
                                         "--call_prefix", tag, "--niterations", "2"]) == 0
    mp.undo()
    return root


def workspace(template: Path, dest: Path) -> Path:
    """A copy of the template; checkpoints are hard links (every write replaces them whole)."""
    def copy(src: str, dst: str) -> None:
        if src.endswith(".pt"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    shutil.copytree(template, dest, copy_function=copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# --- what the cases put in place -------------------------------------------------------------

def saved(name: str, change: Callable[[dict], None]) -> Setup:
    """models/m_NAME.pt: run 0's checkpoint changed by `change`."""
    def setup(folder: Path, data: Path, mp) -> None:
        ckpt = ckpt_io.load(folder / "models" / "m_0.pt")
        change(ckpt)
        torch.save(ckpt, folder / "models" / f"m_{name}.pt")
    return setup


def nan_weight(ckpt: dict) -> None:
    next(iter(ckpt["model"].values())).view(-1)[0] = float("nan")


def zero_byte(folder: Path, data: Path, mp) -> None:
    (folder / "models" / "m_z.pt").write_bytes(b"")


def code_file(folder: Path, data: Path, mp) -> None:
    (folder / "models" / "m_code.pt").write_bytes(pickle.dumps(Crafted(folder / "pwned")))


def held_by_us(folder: Path, data: Path, mp) -> None:
    """Tag 0 held as a running training run holds it (released when the case's copy goes)."""
    held_by_us.lock = RunLock(train.RunFiles(folder, "0").lock).acquire()


def flipped_pixel(folder: Path, data: Path, mp) -> None:
    path = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[16 + 300] ^= 0xFF
    path.write_bytes(bytes(raw))


def unreadable_data(folder: Path, data: Path, mp) -> None:
    def denied(self, root):
        raise PermissionError(errno.EACCES, "Permission denied", str(root / self.name / "raw"))
    mp.setattr(Dataset, "load_uint8", denied)


def little_memory(folder: Path, data: Path, mp) -> None:
    mp.setattr(cli, "available_memory", lambda device: 8e9)


def full_disk(under: str, fits: int = 0) -> Setup:
    """After `fits` files, every file written whole into a folder named `under` meets a full
    disk: the write goes to /dev/full, which answers ENOSPC."""
    def setup(folder: Path, data: Path, mp) -> None:
        real, writes = open, []

        def open_full(path, mode="r", *args, **kwargs):
            if under in Path(path).parts and "w" in mode:
                writes.append(path)
                if len(writes) > fits:
                    return real("/dev/full", mode, *args, **kwargs)
            return real(path, mode, *args, **kwargs)
        mp.setattr(ground, "open", open_full, raising=False)
    return setup


full_models_disk = full_disk("models", fits=1)  # the checkpoint at count 0 fits


def full_logs_disk(folder: Path, data: Path, mp) -> None:
    log = folder / "logs" / "log-0.txt"
    log.unlink()
    log.symlink_to("/dev/full")  # every write: ENOSPC, as on a full file system


def image_folder(folder: Path, data: Path, mp) -> None:
    (folder / "images" / "img_new.png").mkdir()


def writes(relpath: str, content: bytes) -> Setup:
    def setup(folder: Path, data: Path, mp) -> None:
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return setup


def damaged_fid_cache(folder: Path, data: Path, mp) -> None:
    cache = data / "fid_stats"
    cache.mkdir()
    (cache / "MNIST-bin0.4375-n4-pool3.npz").write_bytes(b"PK\x03\x04 not an archive")


def truncated_inception(folder: Path, data: Path, mp) -> None:
    home = folder.parent / "torch-home"
    weights = home / "hub" / "checkpoints" / frechet.WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    real = frechet.weights_path()
    weights.write_bytes(real.read_bytes()[:1 << 16] if real.is_file() else b"PK\x03\x04")
    mp.setenv("TORCH_HOME", str(home))
    truncated_inception.real = True


def interrupt_on_load(folder: Path, data: Path, mp) -> None:
    """Ctrl-C while the checkpoint is read, i.e. before any work or output."""
    real = ckpt_io.load

    def load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    mp.setattr(ckpt_io, "load", load)


def checkpoint_gone(*keep: str) -> Setup:
    """Run 0's checkpoint deleted; of its other files only those named in `keep` are left."""
    def setup(folder: Path, data: Path, mp) -> None:
        (folder / "models" / "m_0.pt").unlink()
        for path in [*(folder / "logs").glob("*-0.txt"), folder / "images" / "img_0.png"]:
            if str(path.relative_to(folder)) not in keep:
                path.unlink()
    return setup


ROW = "results/smoke/mnist-ladder-sym-s0"  # a row of the smoke preset, under --out results


def row_json(state: object) -> Setup:
    return writes(f"{ROW}/row.json", json.dumps(state).encode())


def folder_at(relpath: str) -> Setup:
    def setup(folder: Path, data: Path, mp) -> None:
        (folder / relpath).mkdir(parents=True)
    return setup


def results_and(setup: Setup) -> Setup:
    """fid_results.{json,md} holding one earlier row each, then `setup`."""
    def both(folder: Path, data: Path, mp) -> None:
        (folder / "fid_results.json").write_text('[{"tag": "old"}]\n')
        (folder / "fid_results.md").write_text(fid.TABLE_HEAD + "| old | 1 | 2 | 4 | 1 | - |\n")
        setup(folder, data, mp)
    return both


def write_error(code: int, strerror: str) -> Setup:
    """Every grid generate.py writes fails with errno `code`, as on a read-only folder."""
    def setup(folder: Path, data: Path, mp) -> None:
        def fails(images, path, **kwargs):
            raise OSError(code, strerror, str(path))
        mp.setattr(generate, "save_grid", fails)
    return setup


def linked_mode(folder: Path, data: Path, mp) -> None:
    (folder / "elsewhere").mkdir()
    (folder / "generated_data").mkdir()
    (folder / "generated_data" / "m").symlink_to(folder / "elsewhere")


def data_file(relpath: str, content: bytes) -> Setup:
    """A file of the data root written with `content`."""
    def setup(folder: Path, data: Path, mp) -> None:
        (data / relpath).write_bytes(content)
    return setup


def tiny_dataset(folder: Path, data: Path, mp) -> None:
    shutil.rmtree(data / "MNIST")
    write_dataset(data, "mnist", n_train=0, n_test=1)


def gzipped_dataset(folder: Path, data: Path, mp) -> None:
    raw = data / "MNIST" / "raw"
    for path in raw.glob("*-ubyte"):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()


def png_file(width: int, height: int, idat: bytes) -> bytes:
    """A PNG of a grey image whose chunks have right checksums, whatever their data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def image_sets(**sets: tuple[int, tuple[int, int], str]) -> Setup:
    """Folders sets/NAME holding `count` images of (width, height) and PIL mode each."""
    def setup(folder: Path, data: Path, mp) -> None:
        from PIL import Image
        for name, (count, size, mode) in sets.items():
            (folder / "sets" / name).mkdir(parents=True)
            for i in range(count):
                Image.new(mode, size, 40 * i).save(folder / "sets" / name / f"{i:05d}.png")
    return setup


def no_images_folder(folder: Path, data: Path, mp) -> None:
    shutil.rmtree(folder / "images")
    (folder / "images").write_text("")


def first_adam(ckpt: dict, k: int = 0) -> dict:
    """The per-parameter state of the first parameter of optimiser k."""
    return ckpt["optimizers"][k]["state"][0]


def set_in(*keys, value) -> Callable[[dict], None]:
    """A change that sets ckpt[keys[0]][keys[1]]... to `value`."""
    def change(ckpt: dict) -> None:
        inner = ckpt
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value() if callable(value) else value
    return change


def perm_with(first: int) -> torch.Tensor:
    perm = torch.arange(96)
    perm[0] = first
    return perm


def nan_in(tensor: torch.Tensor) -> None:
    tensor.view(-1)[0] = math.nan


SCHEMA_BREAKS = [  # (what, change to run 0's checkpoint, words of the message)
    ("NaN Adam moments", lambda c: nan_in(first_adam(c)["exp_avg"]),
     "optimizers[0].state[0].exp_avg holds NaN or infinite values"),
    ("wrongly shaped Adam moments", lambda c: first_adam(c, 1).update(exp_avg_sq=torch.ones(3)),
     "optimizers[1].state[0].exp_avg_sq has shape (3,), expected"),
    ("negative Adam second moments", lambda c: first_adam(c).update(
        exp_avg_sq=-first_adam(c)["exp_avg_sq"] - 1),
     "optimizers[0].state[0].exp_avg_sq holds values below 0"),
    ("odd Adam betas", set_in("optimizers", 0, "param_groups", 0, "betas", value=(0.9, 1.5)),
     "optimizers[0].param_groups[0].betas 1.5 is out of range"),
    ("an Adam step that is text", lambda c: first_adam(c).update(step="2"),
     "optimizers[0].state[0].step '2' is not a finite number"),
    ("one optimiser for two", lambda c: c["optimizers"].pop(),
     "optimizers is not a list of 2 optimiser states for sym"),
    ("a sampler order out of range", set_in("sampler", "perm", value=lambda: perm_with(500)),
     "sampler.perm is not an order of the 96 images"),
    ("a sampler order of floats", set_in("sampler", "perm", value=lambda: torch.rand(96)),
     "sampler.perm is not a list of image indices"),
    ("a sampler order that is text", set_in("sampler", "perm", value="0 1 2"),
     "sampler.perm is not a list of image indices"),
    ("a negative sampler count", set_in("sampler", "count", value=-1),
     "sampler.count -1 is not a whole number"),
    ("a truncated torch RNG state", lambda c: c["rng"].update(torch=c["rng"]["torch"][:10]),
     "rng.torch is not a random-generator state"),
    ("NumPy RNG keys out of range", lambda c: c["rng"]["numpy"][1].__setitem__(0, -5),
     "rng.numpy is not a NumPy random state"),
    ("a Python RNG state that is text", set_in("rng", "python", value="seed"),
     "rng.python is not a Python random state"),
    ("MI statistics of the wrong length", set_in("mi", "q0", "m", value=lambda: torch.rand(3)),
     "mi.q0.m has shape (3,), expected (4,)"),
    ("MI marginals above 1", lambda c: c["mi"]["p1"]["m"].fill_(2.0),
     "mi.p1.m holds values above 1"),
    ("a NaN image chain", lambda c: nan_in(c["chain"]),
     "its image-grid chain holds NaN or infinite values"),
    ("NaN running means", set_in("means", "values", "ploss1", value=lambda: torch.tensor(math.nan)),
     "means.values.ploss1 holds NaN or infinite values"),
    ("a NaN elapsed time", set_in("elapsed", value=math.nan), "elapsed nan is not a finite number"),
    ("a negative elapsed time", set_in("elapsed", value=-3.0), "elapsed -3.0 is out of range"),
]


CASES = [
    # lost or mixed work
    Case("other method on the same tag", ("main_sym.py", "--call_prefix", "e", "--load_prefix",
                                          "e", "--niterations", "3"),
         2, "m_e.pt holds a run of main_elbo.py; continue it with main_elbo.py"),
    Case("tag held by a running process", ("main_sym.py", "--call_prefix", "0", "--load_prefix",
                                           "0", "--niterations", "3"),
         2, f"tag 0 is in use by a running process (PID {os.getpid()})", held_by_us),
    Case("a flipped byte in the data", ("main_sym.py", "--call_prefix", "n", "--niterations", "3"),
         2, "train-images-idx3-ubyte is damaged (md5 ", flipped_pixel),
    Case("unreadable data folder", ("main_sym.py", "--call_prefix", "n", "--niterations", "3"),
         2, "permission denied", unreadable_data, not_in_line=("not found",)),
    # a fresh run over files of an earlier run of the tag
    Case("fresh run over log, stats and grid", ("main_sym.py", "--call_prefix", "0",
                                                 "--niterations", "2"),
         2, "tag 0 has files of an earlier run (logs/log-0.txt, images/img_0.png, "
            "logs/statp1-0.txt, logs/statq0-0.txt",
         checkpoint_gone("logs/log-0.txt", "logs/statq0-0.txt", "logs/statq1-0.txt",
                         "logs/statp1-0.txt", "images/img_0.png")),
    Case("fresh run over the log alone", ("main_elbo.py", "--call_prefix", "0", "--niterations",
                                          "2"),
         2, "tag 0 has files of an earlier run (logs/log-0.txt)",
         checkpoint_gone("logs/log-0.txt"), not_in_line=("--load_prefix",)),
    Case("fresh run over a stat file alone", ("main_sym.py", "--call_prefix", "0"),
         2, "(logs/statp1-0.txt) that a fresh run would replace; pick another --call_prefix, "
            "or pass --overwrite", checkpoint_gone("logs/statp1-0.txt")),
    Case("fresh run over the image grid alone", ("main_sym.py", "--call_prefix", "0"),
         2, "(images/img_0.png)", checkpoint_gone("images/img_0.png")),
    Case("started from another tag over a log", ("main_sym.py", "--call_prefix", "0",
                                                  "--load_prefix", "e"),
         2, "tag 0 has files of an earlier run (logs/log-0.txt)",
         checkpoint_gone("logs/log-0.txt")),
    Case("fresh run over the checkpoint", ("main_elbo.py", "--call_prefix", "0"),
         2, "m_0.pt already exists: continue it with --load_prefix 0"),
    # a checkpoint field by field against its schema (resumed, and where only weights are used)
    *[Case(f"checkpoint with {what}", ("main_sym.py", "--call_prefix", "x", "--load_prefix",
                                       "x", "--niterations", "4"),
           2, f"m_x.pt: a damaged checkpoint ({words}", saved("x", change),
           not_in_line=("lower --stepsize", "non-finite"))
      for what, change, words in SCHEMA_BREAKS],
    Case("NaN optimiser state, generate.py", ("generate.py", "--call_prefix", "x"),
         2, "m_x.pt: a damaged checkpoint (optimizers[1].state[0].exp_avg holds NaN",
         saved("x", lambda c: first_adam(c, 1)["exp_avg"].view(-1).__setitem__(0, math.nan))),
    Case("MI of the wrong length, FID", ("symvae.evaluate.fid", "--call_prefix", "x"),
         2, "m_x.pt: a damaged checkpoint (mi.q1.mi has shape (3,), expected (8,))",
         saved("x", lambda c: c["mi"]["q1"].update(mi=torch.zeros(3)))),
    # one set of checks per flag, the same in every command that takes it
    *[Case(f"{script[0]} --chain_steps 0", (*script, "--chain_steps", "0"),
           2, "--chain_steps 0: must be a positive number")
      for script in (("generate.py", "--call_prefix", "0"), ("generate_data.py", "--call_prefix",
                                                             "0"),
                     ("symvae.evaluate.fid", "--call_prefix", "0"), ("symvae.reproduce.runner",))],
    Case("reproduce --stepsize 0.5", ("symvae.reproduce.runner", "--stepsize", "0.5"),
         2, "--stepsize 0.5: must be a positive learning rate of at most 0.01"),
    Case("reproduce --seeds 2^32", ("symvae.reproduce.runner", "--seeds", "0", str(2**32)),
         2, f"--seeds {2**32}: must be between 0 and {2**32 - 1}", not_in_line=("leave it out",)),
    Case("reproduce --device bogus", ("symvae.reproduce.runner", "--device", "bogus"),
         2, "--device 'bogus': not a device symvae runs on"),
    Case("reproduce --device mps, none here", ("symvae.reproduce.runner", "--device", "mps"),
         2, "--device mps: MPS is not available here"),
    Case("reproduce --nz1 0", ("symvae.reproduce.runner", "--nz1", "0"),
         2, "--nz1 0: must be a number of bits between 1 and 4096"),
    Case("reproduce --bs beyond the limit", ("symvae.reproduce.runner", "--bs", "70000"),
         2, "--bs 70000: must be between 1 and 65536"),
    Case("generate_data.py --bs beyond the limit", ("generate_data.py", "--call_prefix", "0",
                                                    "--bs", "70000"),
         2, "--bs 70000: must be between 1 and 65536"),
    Case("FID --feature_bs 0", ("symvae.evaluate.fid", "--call_prefix", "0", "--feature_bs", "0"),
         2, "--feature_bs 0: must be between 1 and 65536"),
    Case("FID --seed 2^32", ("symvae.evaluate.fid", "--call_prefix", "0", "--seed", str(2**32)),
         2, f"--seed {2**32}: must be between 0 and"),
    Case("--device with a bad index", ("generate.py", "--call_prefix", "0", "--device", "cuda:x"),
         2, "--device 'cuda:x': not a device symvae runs on"),
    # argparse's own refusals: one line, no usage block
    Case("a number that is not one", ("main_sym.py", "--call_prefix", "n", "--bs", "x"),
         2, "error: argument --bs: invalid int value: 'x'; see "),
    Case("an unknown flag", ("generate.py", "--call_prefix", "0", "--bogus"),
         2, "unrecognized arguments: --bogus"),
    Case("a missing required flag", ("symvae.evaluate.plot",),
         2, "the following arguments are required: --call_prefix"),
    Case("a choice not offered", ("main_elbo.py", "--nan_policy", "maybe"),
         2, "argument --nan_policy: invalid choice: 'maybe'"),
    Case("reproduce: an unknown preset", ("symvae.reproduce.runner", "--preset", "huge"),
         2, "argument --preset: invalid choice: 'huge'"),
    Case("convert without OUT", ("symvae.learn.convert", "--to", "authors", "models/m_0.pt"),
         2, "the following arguments are required: OUT"),
    # results and state files of the tools, checked before any work
    Case("reproduce: a wrong type in row.json", ("symvae.reproduce.runner",),
         2, "row.json: not a row record (stages.train.iterations '8' is not a count)",
         row_json({"row": {}, "stages": {"train": {"key": [], "iterations": "8"}}})),
    Case("reproduce: row.json whose stages are a list", ("symvae.reproduce.runner",),
         2, "row.json: not a row record (no stages)", row_json({"stages": []})),
    Case("reproduce: row.json with a NaN FID", ("symvae.reproduce.runner",),
         2, "stages.fid.limiting_fid nan is not a number",
         writes(f"{ROW}/row.json", b'{"stages": {"fid": {"limiting_fid": NaN}}}')),
    Case("reproduce: row.json not UTF-8", ("symvae.reproduce.runner",),
         2, "row.json: unreadable (byte 0 is not UTF-8 text)", writes(f"{ROW}/row.json", b"\xff")),
    Case("reproduce: a folder where row.json goes", ("symvae.reproduce.runner",),
         2, "row.json is a folder, but the row's record is written there",
         folder_at(f"{ROW}/row.json")),
    Case("reproduce: a file where a row's folder goes", ("symvae.reproduce.runner",),
         2, "mnist-ladder-sym-s0 is a file, but the row's folder goes there", writes(ROW, b"")),
    Case("reproduce: a row's fid_results.json of numbers", ("symvae.reproduce.runner",),
         2, "fid_results.json: unreadable results file (not a list of records)",
         writes(f"{ROW}/fid_results.json", b"[1, 2]")),
    Case("reproduce: a row's fid_results.md not UTF-8", ("symvae.reproduce.runner",),
         2, "fid_results.md: unreadable results file (byte 2 is not UTF-8 text)",
         writes(f"{ROW}/fid_results.md", b"| \xfe")),
    Case("reproduce: a corrupt jobs.json",
         ("symvae.reproduce.runner", "--executor", "submitit-local"),
         2, "jobs.json: unreadable (JSONDecodeError); delete it",
         writes("results/smoke/submitit/jobs.json", b"{")),
    Case("reproduce: jobs.json that is a list", ("symvae.reproduce.runner", "--executor",
                                                  "submitit-local"),
         2, "jobs.json: not a record of job ids", writes("results/smoke/submitit/jobs.json",
                                                          b"[]")),
    Case("reproduce: --out that is a file", ("symvae.reproduce.runner", "--out", "afile"),
         2, "--out ", writes("afile", b""), not_in_line=("Traceback",)),
    Case("reproduce: a folder where the table goes", ("symvae.reproduce.runner", "--table_only"),
         2, "table.json is a folder, but the table is written there",
         folder_at("results/smoke/table.json")),
    Case("FID: fid_results.md not UTF-8", ("symvae.evaluate.fid", "--call_prefix", "0"),
         2, "fid_results.md: unreadable results file (byte 0 is not UTF-8 text)",
         writes("fid_results.md", b"\xff\xfe")),
    Case("FID: a folder where fid_results.json goes", ("symvae.evaluate.fid", "--call_prefix", "0"),
         2, "fid_results.json is a folder, but the results are written there",
         folder_at("fid_results.json")),
    Case("FID: fid_results.json of numbers", ("symvae.evaluate.fid", "--call_prefix", "0"),
         2, "fid_results.json: unreadable results file (not a list of records)",
         writes("fid_results.json", b"[3]")),
    Case("FID: the .md meets a full disk after the .json",
         ("symvae.evaluate.fid", "--call_prefix", "0"),
         4, "fid_results.md (No space left on device)",
         results_and(full_disk("mnist-ladder", fits=1)),
         changes=("data/fid_stats/MNIST-bin0.4375-n4-pool3.npz",),
         lines=5),  # with the notes on 4 images: singular covariances, no KID for either set
    # write failures outside training name the real obstacle
    Case("convert into a folder", ("symvae.learn.convert", "--to", "authors", "models/m_0.pt",
                                   "logs", "--overwrite"),
         2, "logs is a folder; OUT is the file to write"),
    Case("convert into a full disk", ("symvae.learn.convert", "--to", "authors", "models/m_0.pt",
                                      "models/authors.pt"),
         4, "authors.pt (No space left on device); free space; ", full_disk("models")),
    Case("generate.py: a folder where a grid goes", ("generate.py", "--call_prefix", "0"),
         2, "images/generated_sta_0.png is a folder, but the grid is written there",
         folder_at("images/generated_sta_0.png")),
    Case("generate.py: a read-only folder", ("generate.py", "--call_prefix", "0"),
         4, "generated_sh_0.png (Permission denied); fix the permissions",
         write_error(errno.EACCES, "Permission denied"), not_in_line=("free space",)),
    Case("generate.py: a read-only file system", ("generate.py", "--call_prefix", "0"),
         4, "(Read-only file system); write to a file system that is writable",
         write_error(errno.EROFS, "Read-only file system"), not_in_line=("free space",)),
    Case("generate_data.py: the set's folder is a link", ("generate_data.py", "--call_prefix",
                                                           "0"),
         2, "generated_data/m is a symbolic link (to ", linked_mode),
    # inputs a plot or a data loader meets
    Case("plot: a decompression bomb for a grid", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "img_0.png: not a readable image grid (DecompressionBombError",
         writes("images/img_0.png", png_file(20000, 20000, zlib.compress(b"")))),
    Case("plot: a grid of a huge size", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "img_0.png: not a readable image grid (ValueError: 5000x5000 pixels)",
         writes("images/img_0.png", png_file(5000, 5000, zlib.compress(b"")))),
    Case("plot: a grid with a broken data stream", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "img_0.png: not a readable image grid (OSError: broken data stream",
         writes("images/img_0.png", png_file(10, 10, b"x\x9c" + bytes(range(50)))),
         not_in_line=("permissions",)),
    Case("MD5SUMS with a free-text line", ("main_sym.py", "--call_prefix", "n"),
         2, "MD5SUMS:1: not an md5sum line (`MD5  FILE`): 'my own digits'",
         data_file("MNIST/raw/MD5SUMS", b"my own digits\n")),
    Case("MD5SUMS not UTF-8", ("generate_data.py", "--call_prefix", "0"),
         2, "MD5SUMS: not an md5sum list (byte 0 is not UTF-8 text)",
         data_file("MNIST/raw/MD5SUMS", b"\xff\xfe")),
    Case("a data set of one image", ("main_elbo.py", "--call_prefix", "n", "--bs", "1"),
         2, "MNIST under data root", tiny_dataset, changes=("data/MNIST/raw/.verified.json",),
         not_in_line=("unexpected",)),
    Case("gzipped IDX files", ("main_sym.py", "--call_prefix", "n"),
         2, "t10k-images-idx3-ubyte.gz is gzipped; decompress", gzipped_dataset,
         not_in_line=("fetch",)),
    # symvae.evaluate.fid on two folders, as pytorch-fid takes them
    Case("FID of a folder of one image", ("symvae.evaluate.fid", "sets/two", "sets/one"),
         2, "sets/one: holds 1 image(s); FID needs at least 2 per set",
         image_sets(two=(2, (28, 28), "L"), one=(1, (28, 28), "L"))),
    Case("FID of an empty folder", ("symvae.evaluate.fid", "sets/none", "sets/two"),
         2, "sets/none: holds 0 image(s)",
         image_sets(two=(2, (28, 28), "L"), none=(0, (0, 0), "L"))),
    Case("FID of a missing folder", ("symvae.evaluate.fid", "sets/two", "sets/gone"),
         2, "sets/gone: no such folder of images", image_sets(two=(2, (28, 28), "L"))),
    Case("FID of 64x48 RGB images", ("symvae.evaluate.fid", "sets/two", "sets/rgb"),
         2, "a 64x48 RGB image; symvae.evaluate.fid compares the 28x28 grey images",
         image_sets(two=(2, (28, 28), "L"), rgb=(3, (64, 48), "RGB"))),
    Case("FID of three folders", ("symvae.evaluate.fid", "sets/two", "sets/two", "sets/two"),
         2, "give two folders of images, not 3", image_sets(two=(2, (28, 28), "L"))),
    # faults that printed a traceback
    Case("full disk under models/", ("main_sym.py", "--call_prefix", "n", "--niterations", "4",
                                     "--save_period", "2"),
         4, "cannot write", full_models_disk,
         changes=("mnist-ladder/models/m_n.pt", "mnist-ladder/logs/log-n.txt",
                  "mnist-ladder/images/img_n.png", *(f"mnist-ladder/logs/stat{g}-n.txt"
                                                     for g in ("p1", "q0", "q1")))),
    Case("full disk under logs/", ("main_sym.py", "--call_prefix", "0", "--load_prefix", "0",
                                   "--niterations", "4"),
         4, "log-0.txt (No space left on device)", full_logs_disk),
    Case("full disk, generate.py", ("generate.py", "--call_prefix", "0"),
         4, "generated_sh_0.png (No space left on device)", full_disk("images")),
    Case("full disk, FID results", ("symvae.evaluate.fid", "--call_prefix", "0"),
         4, "fid_results.json (No space left on device)", full_disk("mnist-ladder"),
         changes=("data/fid_stats/MNIST-bin0.4375-n4-pool3.npz",),
         lines=5),  # with the notes on 4 images: singular covariances, no KID for either set
    Case("zero-byte checkpoint, training", ("main_sym.py", "--load_prefix", "z", "--call_prefix",
                                            "n", "--niterations", "3"),
         2, "m_z.pt: not a readable checkpoint (EOFError: empty file)", zero_byte),
    Case("zero-byte checkpoint, generate.py", ("generate.py", "--call_prefix", "z"),
         2, "m_z.pt: not a readable checkpoint", zero_byte),
    Case("zero-byte checkpoint, generate_data.py", ("generate_data.py", "--call_prefix", "z"),
         2, "m_z.pt: not a readable checkpoint", zero_byte),
    Case("zero-byte checkpoint, FID", ("symvae.evaluate.fid", "--call_prefix", "z"),
         2, "m_z.pt: not a readable checkpoint", zero_byte),
    Case("negative seed", ("main_sym.py", "--call_prefix", "n", "--seed", "-1"), 2, "--seed -1"),
    Case("seed above 2^32-1", ("generate.py", "--call_prefix", "0", "--seed", str(2**32)),
         2, f"--seed {2**32}: must be between 0 and {2**32 - 1}"),
    Case("--log_period 0", ("main_sym.py", "--call_prefix", "n", "--log_period", "0"),
         2, "--log_period 0: must be a positive number"),
    Case("--save_period 0", ("main_elbo.py", "--call_prefix", "n", "--save_period", "0"),
         2, "--save_period 0: must be a positive number"),
    Case("--chain_steps -1", ("generate.py", "--call_prefix", "0", "--chain_steps", "-1"),
         2, "--chain_steps -1: must be"),
    Case("generate_data.py --n 0", ("generate_data.py", "--call_prefix", "0", "--n", "0"),
         2, "--n 0: must be a positive number"),
    Case("generate_data.py --n 1", ("generate_data.py", "--call_prefix", "0", "--n", "1"),
         2, "--n 1: FID needs at least 2 images per set"),
    Case("bad --mode", ("generate_data.py", "--call_prefix", "0", "--mode", "../x"),
         2, "--mode '../x': use letters, digits"),
    Case("--device mps where there is none", ("main_sym.py", "--call_prefix", "n", "--device",
                                              "mps"),
         2, "--device mps: MPS is not available here"),
    Case("--device meta", ("main_sym.py", "--call_prefix", "n", "--device", "meta"),
         2, "--device 'meta': not a device symvae runs on"),
    Case("--device xpu", ("generate.py", "--call_prefix", "0", "--device", "xpu"),
         2, "--device 'xpu': not a device symvae runs on"),
    Case("--device of no backend", ("main_sym.py", "--call_prefix", "n", "--device", "tpu"),
         2, "--device 'tpu': not a device"),
    Case("generate.py --n beyond memory", ("generate.py", "--call_prefix", "0", "--n",
                                           "1000000000"),
         2, "--n 1000000000: needs about"),
    Case("--bs beyond memory", ("main_sym.py", "--call_prefix", "n", "--bs", "65536"),
         2, "--bs 65536: needs about", little_memory),
    Case("NaN weight in the checkpoint", ("generate.py", "--call_prefix", "nan"),
         2, "holds NaN or infinite values", saved("nan", nan_weight)),
    Case("NaN weight, training", ("main_sym.py", "--load_prefix", "nan", "--call_prefix", "n"),
         2, "holds NaN or infinite values", saved("nan", nan_weight)),
    Case("wrongly shaped chain", ("main_sym.py", "--call_prefix", "ch", "--load_prefix", "ch",
                                  "--niterations", "4"),
         2, "image-grid chain has shape (3, 5)",
         saved("ch", lambda c: c.update(chain=torch.zeros(3, 5)))),
    Case("damaged cached FID statistics", ("symvae.evaluate.fid", "--call_prefix", "0"),
         0, "unreadable cached statistics (BadZipFile); computing them again", damaged_fid_cache,
         changes=("data/fid_stats/MNIST-bin0.4375-n4-pool3.npz", "mnist-ladder/fid_results.md",
                  "mnist-ladder/fid_results.json"),
         lines=5),  # with the notes on 4 images: singular covariances, no KID for either set
    Case("truncated Inception weights", ("symvae.evaluate.fid", "--call_prefix", "0"),
         2, "Inception weights are damaged", truncated_inception),
    Case("plot: log not UTF-8", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "log-0.txt: not a training log (byte 0 is not UTF-8", writes("logs/log-0.txt",
                                                                           b"\xff\xfe\x00t")),
    Case("plot: tags over the file-name limit",
         ("symvae.evaluate.plot", "--call_prefix", *["a" * 100] * 3),
         2, "over this file system's limit of 255"),
    Case("plot: image grid not an image", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "img_0.png: not a readable image", writes("images/img_0.png", b"not a png")),
    Case("plot: stat file with a non-number", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "statq0-0.txt: not a list of numbers", writes("logs/statq0-0.txt", b"0.5\nabc\n")),
    Case("plot: images/ not writable", ("symvae.evaluate.plot", "--call_prefix", "0"),
         2, "images is a file", no_images_folder),
    # nonsense accepted, misleading words
    Case("checkpoint at count -7", ("main_sym.py", "--call_prefix", "neg", "--load_prefix", "neg",
                                    "--niterations", "3"),
         2, "count -7 is not an iteration count", saved("neg", lambda c: c.update(count=-7))),
    Case("--workers -1", ("generate_data.py", "--call_prefix", "0", "--workers", "-1"),
         2, "--workers -1: must be 0"),
    Case("--stepsize 0.99", ("main_sym.py", "--call_prefix", "n", "--stepsize", "0.99"),
         2, "--stepsize 0.99: must be a positive learning rate of at most 0.01"),
    Case("img_TAG.png is a folder", ("main_sym.py", "--call_prefix", "new", "--niterations", "2"),
         2, "img_new.png is a folder, but the run writes a file there", image_folder,
         not_in_line=(".tmp", "--load_prefix")),
    Case("checkpoint that would run code", ("main_sym.py", "--load_prefix", "code",
                                            "--call_prefix", "n"),
         2, "m_code.pt: refused, because loading it could run code", code_file,
         not_in_line=("weights_only",)),
    Case("Ctrl-C while starting, training", ("main_sym.py", "--load_prefix", "0",
                                              "--call_prefix", "n"),
         130, "SIGINT: stopped", interrupt_on_load),
    Case("Ctrl-C while starting, generate.py", ("generate.py", "--call_prefix", "0"),
         130, "SIGINT: stopped", interrupt_on_load),
    Case("Ctrl-C while starting, generate_data.py", ("generate_data.py", "--call_prefix", "0"),
         130, "SIGINT: stopped", interrupt_on_load),
    Case("Ctrl-C while starting, FID", ("symvae.evaluate.fid", "--call_prefix", "0"),
         130, "SIGINT: stopped", interrupt_on_load),
    Case("generate_data over a file", ("generate_data.py", "--call_prefix", "0"),
         2, "generated_data is a file", writes("generated_data", b"")),
]


def projection(x: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for Inception: 6 linear features of the pixels."""
    w = torch.randn(x[0].numel(), 6, generator=torch.Generator().manual_seed(5))
    return x.flatten(1) @ w


def run_case(case: Case, folder: Path, data: Path, monkeypatch) -> int:
    """The command in-process inside `folder`, with the sizes every case shares."""
    script, *flags = case.command
    if script in ("main_sym.py", "main_elbo.py"):
        method = script[len("main_"):-len(".py")]
        flags = [*SMALL, "--data_root", str(data), *flags]
        entry = lambda: train.main(HVAE, method, flags)
    elif script == "generate.py":
        entry = lambda: generate.main(HVAE, [*NZ, "--chain_steps", "1", *flags])
    elif script == "generate_data.py":
        flags = [*NZ, "--mode", "m", "--n", "4", "--chain_steps", "1", "--workers", "0",
                 "--data_root", str(data), *flags]
        entry = lambda: export.main(HVAE, flags)
    elif script == "symvae.evaluate.fid":
        flags = [*NZ, "--n", "4", "--chain_steps", "1", "--no_progress", "--data_root",
                 str(data), *flags]
        real = getattr(case.setup, "real", False)
        entry = lambda: fid.main(flags, features=None if real else projection)
    elif script == "symvae.reproduce.runner":
        entry = lambda: reproduce.main(["--preset", "smoke", "--out", "results", "--data_root",
                                        str(data), "--no_progress", *flags])
    elif script == "symvae.learn.convert":
        entry = lambda: convert.main(flags)
    else:
        entry = lambda: plot.main(flags)
    monkeypatch.chdir(folder)
    try:
        return entry()
    except SystemExit as stop:
        return stop.code


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the crafted m_code.pt
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refusal(case: Case, template, tmp_path, monkeypatch, capsys):
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    if case.setup:
        case.setup(folder, data, monkeypatch)
    before = tree(root)
    code = run_case(case, folder, data, monkeypatch)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, err
    assert "Traceback" not in err
    assert code != entry.UNEXPECTED and "unexpected" not in err  # each is foreseen
    assert len(lines) == case.lines, err
    # a refusal or failure is the last line, after any notices; a success's notice is the first
    first = lines[-1] if case.code in (2, 3, 4) else lines[0]
    assert case.code not in (2, 3, 4) or sum(line.startswith("error: ") for line in lines) == 1
    assert case.code not in (2, 3, 4) or first.startswith("error: "), err
    assert case.line in first, err
    assert not any(word in first for word in case.not_in_line), first
    after = tree(root)
    assert {k: after.get(k) for k in before if k not in case.changes} == \
        {k: v for k, v in before.items() if k not in case.changes}
    if case.code == 2:  # a refusal writes nothing, not even an empty folder
        assert set(after) - set(before) - set(case.changes) == set()
    assert not (folder / "pwned").exists()
    lock = getattr(case.setup, "lock", None)
    if lock:
        lock.release()


# --- the last line of defence: an exception nobody foresaw ------------------------------------

@dataclass
class Fault:
    name: str
    command: tuple[str, ...]
    target: tuple[object, str]  # (module or class, attribute) made to raise
    details: str  # where the traceback goes: a folder of the workspace, or "tmp"
    changes: tuple[str, ...] = ()


FAULTS = [
    Fault("training", ("main_sym.py", "--call_prefix", "0", "--load_prefix", "0",
                       "--niterations", "4"),
          (train.Trainer, "device_iteration"), "mnist-ladder/logs",
          changes=("mnist-ladder/logs/log-0.txt",)),
    Fault("generate.py", ("generate.py", "--call_prefix", "0"), (generate, "limiting"),
          "mnist-ladder/logs"),
    Fault("generate_data.py", ("generate_data.py", "--call_prefix", "0"),
          (export, "image_chunks"), "mnist-ladder/logs", changes=("mnist-ladder/generated_data",)),
    Fault("FID", ("symvae.evaluate.fid", "--call_prefix", "0"), (fid, "frechet_distance"),
          "mnist-ladder/logs",
          changes=("data/fid_stats", "data/fid_stats/MNIST-bin0.4375-n4-pool3.npz")),
    Fault("plot", ("symvae.evaluate.plot", "--call_prefix", "0"), (plot, "save_figures"),
          "mnist-ladder/logs"),
    Fault("convert", ("symvae.learn.convert", "--to", "authors", "models/m_0.pt", "authors.pt"),
          (convert, "to_authors"), "tmp"),
    Fault("reproduce", ("symvae.reproduce.runner", "--dry-run"),
          (reproduce, "build_rows"), "tmp"),
]


def run_tool(command: tuple[str, ...], folder: Path, data: Path, monkeypatch) -> int:
    """A command as the table of refusals runs it."""
    return run_case(Case("", command, 0, ""), folder, data, monkeypatch)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_an_unforeseen_exception_is_one_line_and_a_file(fault: Fault, template, tmp_path,
                                                        monkeypatch, capsys):
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug\nover two lines")
    monkeypatch.setattr(*fault.target, broken)
    before = tree(root)
    code = run_tool(fault.command, folder, data, monkeypatch)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no bars
    assert code == entry.UNEXPECTED == 70, err
    assert "Traceback" not in err and sum(line.startswith("error") for line in lines) == 1, err
    assert lines[-1].startswith("error: unexpected ZeroDivisionError: a bug; details in "), err
    where = temp if fault.details == "tmp" else root / fault.details
    (details,) = where.glob("*.txt") if fault.details == "tmp" else where.glob("error-*.txt")
    assert str(details) in lines[-1]
    text = details.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    after = tree(root)
    assert {k: after.get(k) for k in before if k not in fault.changes} == \
        {k: v for k, v in before.items() if k not in fault.changes}
    new = set(after) - set(before) - set(fault.changes)
    assert new <= {os.path.relpath(details, root)}, new  # nothing half-written is left


def test_a_command_inside_another_keeps_the_outer_details_place(tmp_path, monkeypatch, capsys):
    """reproduce runs training in-process: a failure after a stage is filed beside its own."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    for name in ("outer", "inner"):
        (tmp_path / name).mkdir()

    def inner() -> int:
        entry.details_beside(tmp_path / "inner", "error-inner")
        return 0

    def outer() -> int:
        entry.details_beside(tmp_path / "outer", "error-outer")
        assert entry.guarded(inner, "inner") == 0
        raise RuntimeError("after the stage")
    assert entry.guarded(outer, "outer") == entry.UNEXPECTED
    (details,) = (tmp_path / "outer").glob("error-outer-*.txt")
    assert str(details) in capsys.readouterr().err
    assert not list((tmp_path / "inner").iterdir())


@pytest.mark.parametrize("command, target", [
    (("symvae.learn.convert", "--to", "authors", "models/m_0.pt", "authors.pt"),
     (convert, "to_authors")),
    (("symvae.evaluate.plot", "--call_prefix", "0"), (plot, "save_figures")),
])
def test_ctrl_c_that_a_tool_does_not_handle_is_one_line(command, target, template, tmp_path,
                                                        monkeypatch, capsys):
    root = workspace(template, tmp_path / "ws")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(*target, interrupted)
    before = tree(root)
    code = run_tool(command, root / "mnist-ladder", root / "data", monkeypatch)
    assert code == 130
    assert capsys.readouterr().err.startswith("SIGINT: stopped; files written before are complete")
    assert tree(root) == before


def test_generate_data_clears_what_an_earlier_run_left_whatever_it_is(template, tmp_path,
                                                                     monkeypatch):
    """A leftover .m.old (here a link, as an earlier version left one) does not stop a run."""
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    linked_mode(folder, data, monkeypatch)
    (folder / "generated_data" / "m").rename(folder / "generated_data" / ".m.old")
    case = Case("", ("generate_data.py", "--call_prefix", "0"), 0, "")
    for _ in range(2):  # the second run replaces the set the first made
        assert run_case(case, folder, data, monkeypatch) == 0
    assert sorted(p.name for p in (folder / "generated_data").iterdir()) == ["m"]
    assert (folder / "elsewhere").is_dir()  # the link's target is not touched


def test_plot_skips_log_lines_beyond_any_plot(template, tmp_path, monkeypatch, capsys):
    root = workspace(template, tmp_path / "ws")
    folder = root / "mnist-ladder"
    with open(folder / "logs" / "log-0.txt", "a") as log:
        log.write("time: 9.0 count: 3 len: 1 ploss1: 1e308\ntime: 9.5 count: 4 len: 1e300\n")
    with pytest.warns(UserWarning, match="log-0.txt:.*not a `name: value ...` log line"):
        assert run_tool(("symvae.evaluate.plot", "--call_prefix", "0"), folder, root / "data",
                        monkeypatch) == 0
    assert (folder / "images" / "plot_losses_0.png").is_file()


def test_bit_rot_that_keeps_size_and_time_is_found_by_a_full_check(template, tmp_path,
                                                                    monkeypatch, capsys):
    """A load trusts a file whose size and modification time it has seen verified
    (docs/long-runs.md); `symvae.data fetch --verify` reads every file in full and names the
    damaged one."""
    from symvae.data import fetch
    root = workspace(template, tmp_path / "ws")
    raw = root / "data" / "MNIST" / "raw"
    assert fetch.main(["--verify", "--root", str(root / "data"), "mnist"]) == 0
    assert "4 raw files match their checksums" in capsys.readouterr().out
    path = raw / "t10k-images-idx3-ubyte"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fetch.main(["--verify", "--root", str(root / "data"), "mnist"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "t10k-images-idx3-ubyte is damaged (md5 " in err
    assert len(err.splitlines()) == 1


def test_a_digest_cache_of_the_wrong_form_is_checked_in_full(template, tmp_path, monkeypatch):
    root = workspace(template, tmp_path / "ws")
    raw = root / "data" / "MNIST" / "raw"
    (raw / ".verified.json").write_text('{"t10k-images-idx3-ubyte": 5, "x": "y"}')
    case = Case("", ("generate_data.py", "--call_prefix", "0"), 0, "")
    assert run_case(case, root / "mnist-ladder", root / "data", monkeypatch) == 0
    cache = json.loads((raw / ".verified.json").read_text())
    assert all(isinstance(v, list) and len(v) == 3 for v in cache.values())


@pytest.mark.slow  # two Inception networks on the CPU: minutes on a busy 2-core machine
def test_fid_of_two_folders_is_pytorch_fids(template, tmp_path, monkeypatch, capsys):
    """`symvae.evaluate.fid DIR DIR` on generate_data.py's sets gives pytorch-fid's own number."""
    if not frechet.weights_path().is_file():
        pytest.skip("pytorch-fid's Inception weights are not in the torch hub")
    from pytorch_fid.fid_score import calculate_fid_given_paths
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    case = Case("", ("generate_data.py", "--call_prefix", "0", "--n", "6"), 0, "")
    assert run_case(case, folder, data, monkeypatch) == 0
    sets = [str(folder / "generated_data" / "m" / s) for s in ("images", "lim_images")]
    capsys.readouterr()
    monkeypatch.chdir(folder)
    assert fid.main([*sets, "--device", "cpu", "--feature_bs", "6"]) == 0
    ours = float(capsys.readouterr().out.split()[1].rstrip(":"))
    theirs = calculate_fid_given_paths(sets, batch_size=6, device="cpu", dims=2048,
                                       num_workers=0)
    assert ours == pytest.approx(theirs, rel=1e-3, abs=1e-3)


def test_full_disk_keeps_the_checkpoint_and_logs_the_stop(template, tmp_path, monkeypatch):
    """The exit-4 run on a full models/ disk: count-2 checkpoint kept, stop line in the log."""
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    full_models_disk(folder, data, monkeypatch)
    case = CASES[[c.name for c in CASES].index("full disk under models/")]
    assert run_case(case, folder, data, monkeypatch) == 4
    assert ckpt_io.load(folder / "models" / "m_n.pt")["count"] == 0
    last = (folder / "logs" / "log-n.txt").read_text().splitlines()[-1]
    assert last.startswith("# stopped: cannot write") and "No space left on device" in last
    assert not list((folder / "models").glob(".m_n.pt.tmp*"))


def test_overwrite_starts_the_tag_afresh(template, tmp_path, monkeypatch):
    """The refused fresh run goes ahead with --overwrite: the earlier log is replaced whole."""
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    checkpoint_gone("logs/log-0.txt")(folder, data, monkeypatch)
    (folder / "logs" / "log-0.txt").write_text("count: 999 earlier history\n")
    case = Case("", ("main_sym.py", "--call_prefix", "0", "--niterations", "1", "--overwrite"),
                0, "")
    assert run_case(case, folder, data, monkeypatch) == 0
    assert "earlier history" not in (folder / "logs" / "log-0.txt").read_text()
    assert ckpt_io.load(folder / "models" / "m_0.pt")["count"] == 1


# --- real processes --------------------------------------------------------------------------

def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def scripts(folder: Path) -> None:
    for path in (REPO / "mnist-ladder").glob("*.py"):
        shutil.copy(path, folder)


@pytest.mark.slow  # three interpreters start torch: about a minute on a busy 2-core machine
def test_second_process_on_a_tag_is_refused_with_the_first_ones_pid(template, tmp_path):
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    scripts(folder)
    first = subprocess.Popen([sys.executable, "main_sym.py", *SMALL, "--data_root", str(data),
                              "--call_prefix", "0", "--load_prefix", "0"], cwd=folder, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = folder / "models" / ".m_0.lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.05)
        before = tree(root / "data")
        # a resume of the same run, and a fresh ELBO run forced over the tag
        for script, *how in (("main_sym.py", "--load_prefix", "0"),
                             ("main_elbo.py", "--overwrite")):
            second = subprocess.run([sys.executable, script, *SMALL, "--data_root", str(data),
                                     "--call_prefix", "0", *how], check=False, cwd=folder,
                                    env=env(), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert second.stderr == (f"error: tag 0 is in use by a running process (PID "
                                     f"{first.pid}) in {folder}; wait for it to end, stop it, "
                                     "or pick another --call_prefix\n")
        assert tree(root / "data") == before
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err  # Ctrl-C: saved, then the conventional status
    assert "SIGINT: checkpoint saved at count" in err and "Traceback" not in err
    assert not (folder / "models" / ".m_0.lock").exists()


def generated(folder: Path) -> dict[str, int]:
    out = folder / "generated_data" / "m"
    counts = {s: len(list((out / s).glob("*.png"))) for s in export.SETS}
    counts.update({c: len(np.load(out / f"{c}.npy")) for c in export.CODES})
    return counts


def test_generate_data_replaces_a_set_whole_and_ctrl_c_keeps_it(template, tmp_path,
                                                                monkeypatch, capsys):
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    flags = [*NZ, "--call_prefix", "0", "--mode", "m", "--chain_steps", "1", "--data_root",
             str(data), "--workers", "0"]
    monkeypatch.chdir(folder)
    assert export.main(HVAE, [*flags, "--n", "20", "--bs", "8"]) == 0
    assert export.main(HVAE, [*flags, "--n", "4"]) == 0
    assert set(generated(folder).values()) == {4}  # no stale images of the --n 20 set
    assert '"images_per_set": 4' in (folder / "generated_data/m/produced_by.json").read_text()
    complete = tree(folder / "generated_data")

    # Ctrl-C halfway: the complete set stays as it was, nothing half-written is left
    real = export.PngWriter.write

    def interrupted(self, *args):
        real(self, *args)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(export.PngWriter, "write", interrupted)
    capsys.readouterr()
    assert export.main(HVAE, [*flags, "--n", "8", "--bs", "4"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"SIGINT: stopped; {folder / 'generated_data' / 'm'} is as it was before this run"
    assert tree(folder / "generated_data") == complete


@pytest.mark.slow  # interpreters that start torch and a pool: about a minute on a busy machine
def test_generate_data_workers_end_with_it_and_a_rerun_is_whole(template, tmp_path,
                                                                monkeypatch):
    root = workspace(template, tmp_path / "ws")
    folder, data = root / "mnist-ladder", root / "data"
    scripts(folder)
    flags = [*NZ, "--call_prefix", "0", "--mode", "m", "--chain_steps", "1", "--data_root",
             str(data), "--workers", "0"]
    monkeypatch.chdir(folder)
    assert export.main(HVAE, [*flags, "--n", "4"]) == 0
    complete = tree(folder / "generated_data")

    # SIGTERM, then kill -9, with two PNG workers: the workers end too, the set is untouched
    def start_and(stop: Callable[[subprocess.Popen], None]) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "generate_data.py", *flags[:-1], "2", "--n",
                                 "128", "--bs", "2", "--chain_steps", "20"], cwd=folder,
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        workers = wait_for_children(proc.pid, 2)
        stop(proc)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        alive = [w for w in workers if _alive(w)]
        for w in alive:  # do not leave them behind when the check fails
            os.kill(w, signal.SIGKILL)
        assert not alive, f"PNG workers {alive} outlived their parent"
        return proc

    proc = start_and(subprocess.Popen.terminate)
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("SIGTERM: stopped; "
                                                 f"{folder / 'generated_data' / 'm'} is as it "
                                                 "was before this run"), err
    assert tree(folder / "generated_data") == complete
    start_and(subprocess.Popen.kill)
    left = tree(folder / "generated_data")
    assert {k: v for k, v in left.items() if not k.startswith(".m.")} == complete  # hidden:
    assert {k.split("/")[0] for k in left if k.startswith(".m.")} <= {".m.partial", ".m.lock"}
    # the workers share the killed run's lock descriptor (fork); the lock is free once the last
    # process holding it is gone, which can trail /proc by a moment: a bounded wait, not a retry
    lock, deadline = folder / "generated_data" / ".m.lock", time.time() + 30
    while time.time() < deadline:
        try:
            RunLock(lock).acquire().release()
            break
        except Busy:
            time.sleep(0.1)
    monkeypatch.chdir(folder)
    assert export.main(HVAE, [*flags, "--n", "6"]) == 0
    assert set(generated(folder).values()) == {6}
    assert not [p.name for p in (folder / "generated_data").iterdir() if p.name != "m"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for_children(pid: int, n: int) -> list[int]:
    """The ids of at least n child processes of `pid`, once it has them."""
    deadline = time.time() + 120
    while time.time() < deadline:
        kids = []
        for thread in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids += [int(k) for k in (thread / "children").read_text().split()]
            except OSError:
                pass
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no {n} workers")
