"""End-to-end checks of an experiment folder's entry scripts, shared by the per-experiment tests.

Each check runs a script in a copy of the folder (conftest's `run_script`) and
asserts on every file the script is documented to write.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from conftest import run_script, unignored_outputs
from PIL import Image

from symvae.data.raw import default_data_root
from symvae.learn import checkpoint as ckpt_io

CELL = 30  # a 28x28 image plus make_grid's 2-pixel padding
COLUMNS = 10
GENERATE_ROWS = 4  # generate.py: 40 images, 10 per row
TINY_NZ0, TINY_NZ1 = 6, 10  # latent sizes of the synthetic runs
TINY = ("--nz0", str(TINY_NZ0), "--nz1", str(TINY_NZ1))


def grid_size(rows: int) -> tuple[int, int]:
    """(width, height) of a PNG grid of `rows` rows of 10 images."""
    return COLUMNS * CELL + 2, rows * CELL + 2


def parse_log(path: Path) -> list[dict[str, float]]:
    """The value lines of a training log as {name: value}, checking `name: value` pairs."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        tokens = line.split(" ")
        assert len(tokens) % 2 == 0, line
        names, values = tokens[0::2], tokens[1::2]
        assert all(n.endswith(":") for n in names), line
        rows.append({n[:-1]: float(v) for n, v in zip(names, values)})
    return rows


def png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L", path
        return np.asarray(img)


def train(folder: Path, method: str, tag: str, data_root: Path, *flags: str) -> None:
    script = {"sym": "main_sym.py", "elbo": "main_elbo.py"}[method]
    run_script(folder, script, "--call_prefix", tag, "--data_root", str(data_root),
               "--device", "cpu", "--seed", "0", "--no_progress", *flags)


def check_training(folder: Path, method: str, data_root: Path, names: tuple[str, ...],
                   mi_bits: dict[str, int], grid_rows: int) -> None:
    """12 tiny iterations: log lines with exactly `names`, checkpoint, grid, MI files."""
    tag = f"t{method}"
    train(folder, method, tag, data_root, *TINY, "--bs", "16", "--niterations", "12",
          "--log_period", "4", "--save_period", "8")
    log = folder / "logs" / f"log-{tag}.txt"
    lines = log.read_text().splitlines()
    assert lines[0].startswith(f"# {method} {folder.name} ")
    assert "(device cpu, fp32, torch " in lines[0]
    assert lines[-1] == "# finished at count 12"
    rows = parse_log(log)
    assert [r["count"] for r in rows] == [4, 8, 12]
    for row in rows:
        assert list(row) == ["time", "count", "len", *names]
        assert all(np.isfinite(v) for v in row.values())
    ckpt = ckpt_io.load(folder / "models" / f"m_{tag}.pt")
    assert (ckpt["experiment"], ckpt["method"], ckpt["count"]) == (folder.name, method, 12)
    assert (ckpt["nz0"], ckpt["nz1"]) == (TINY_NZ0, TINY_NZ1)
    assert png(folder / "images" / f"img_{tag}.png").shape[::-1] == grid_size(grid_rows)
    stats = sorted(p.name for p in (folder / "logs").glob(f"stat*-{tag}.txt"))
    assert stats == sorted(f"stat{g}-{tag}.txt" for g in mi_bits)
    for group, bits in mi_bits.items():
        text = (folder / "logs" / f"stat{group}-{tag}.txt").read_text()
        values = [float(v) for v in text.split()]
        assert len(values) == bits and values == sorted(values)  # ascending, as the authors


def check_generate(folder: Path, method: str) -> None:
    tag = f"t{method}"
    run_script(folder, "generate.py", "--call_prefix", tag, *TINY, "--chain_steps", "3",
               "--device", "cpu", "--seed", "0")
    for kind in ("sh", "sta"):
        image = png(folder / "images" / f"generated_{kind}_{tag}.png")
        assert image.shape[::-1] == grid_size(GENERATE_ROWS)


def check_generate_data(folder: Path, method: str, data_root: Path, binary: bool) -> None:
    """20 images per set, 28x28 grey PNGs; binary experiments write 0/255 only."""
    n = 20
    run_script(folder, "generate_data.py", "--call_prefix", f"t{method}", "--mode", method,
               *TINY, "--n", str(n), "--chain_steps", "3", "--bs", "8", "--workers", "0",
               "--data_root", str(data_root), "--device", "cpu", "--seed", "0")
    out = folder / "generated_data" / method
    for name in ("images", "sh_images", "lim_images"):
        files = sorted((out / name).iterdir())
        assert [f.name for f in files] == [f"img_{i:05d}.png" for i in range(n)]
        pixels = np.stack([png(f) for f in files])
        assert pixels.shape == (n, 28, 28)
        grey = not set(np.unique(pixels)) <= {0, 255}
        if binary:
            assert not grey, name  # thresholded at logit 0
        elif name == "images":
            assert grey  # the data keep their grey levels
    for kind in ("prior", "post", "lim"):
        for layer, bits in ((0, TINY_NZ0), (1, TINY_NZ1)):
            codes = np.load(out / f"z{layer}_{kind}.npy")
            assert codes.shape == (n, bits) and codes.dtype == np.float32
            assert set(np.unique(codes)) <= {0.0, 1.0}
    assert not list(out.glob("*_z.npy"))


def end_to_end(folder: Path, method: str, data_root: Path, names: tuple[str, ...],
               mi_bits: dict[str, int], grid_rows: int, binary: bool) -> None:
    """Train, generate.py and generate_data.py on synthetic data, checking every output."""
    check_training(folder, method, data_root, names, mi_bits, grid_rows)
    check_generate(folder, method)
    check_generate_data(folder, method, data_root, binary)
    assert unignored_outputs(folder, folder.name) == []  # each output is in .gitignore


def real_data_root() -> Path:
    """$SYMVAE_TEST_DATA if set, else the default data root the CI fetches into."""
    return Path(os.environ.get("SYMVAE_TEST_DATA") or default_data_root())


def data_loss_windows(folder: Path, method: str, name: str, iterations: int = 60,
                      period: int = 10) -> tuple[float, float]:
    """Mean of log value `name` over the first and over the last `period` iterations.

    The logged values are running means with weight 1/(count+1) (exact means of
    all iterations so far, below 1000), so the mean over iterations (a, b] is
    (b*M_b - a*M_a) / (b - a).
    """
    train(folder, method, "real", real_data_root(), "--bs", "32", "--stepsize", "1e-3",
          "--niterations", str(iterations), "--log_period", str(period))
    rows = parse_log(folder / "logs" / "log-real.txt")
    by_count = {int(r["count"]): r[name] for r in rows}
    last, before = by_count[iterations], by_count[iterations - period]
    return by_count[period], (iterations * last - (iterations - period) * before) / period


def assert_only_changed(before: dict[str, torch.Tensor], model: torch.nn.Module,
                        changed: set[str]) -> None:
    """Parameters named in `changed` moved, all others kept their values."""
    for name, param in model.named_parameters():
        moved = not torch.equal(before[name], param.detach())
        assert moved == (name in changed), name
