"""symvae.evaluate.plot: log parsing by name, the PNG command, and every notebook executed
headless."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from symvae.evaluate import plot

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(REPO.glob("*/plot_*.ipynb"))
TINY_RUN = ("--nz0", "4", "--nz1", "8", "--bs", "8", "--niterations", "12", "--log_period", "3",
            "--save_period", "6", "--device", "cpu", "--seed", "0", "--no_progress")


def write_log(folder: Path, tag: str, names: tuple[str, ...], n: int = 5,
              method: str = "sym") -> None:
    """A log with milestone lines and n value lines logging `names`."""
    lines = [f"# {method} synthetic --call_prefix {tag}"]
    for i in range(1, n + 1):
        lines.append(" ".join([f"time: {2.0 * i}", f"count: {10 * i}", "len: 0.01"]
                              + [f"{name}: {1.0 / (i + k)}" for k, name in enumerate(names)]))
    lines.append("# finished")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "logs" / f"log-{tag}.txt").write_text("\n".join(lines) + "\n")


def write_grid(folder: Path, tag: str) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.new("L", (302, 152), 128).save(folder / "images" / f"img_{tag}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """mnist-ladder after a tiny symmetric run (tag 0) and ELBO run (tag 1) on synthetic data.

    Trained once for the module (hence conftest's helpers rather than its
    per-test fixtures): the PNG and notebook tests only read it.
    """
    from conftest import copy_sources, run_script, write_dataset
    tmp = tmp_path_factory.mktemp("trained")
    data = tmp / "data"
    write_dataset(data, "mnist")
    folder = tmp / "mnist-ladder"
    copy_sources(REPO / "mnist-ladder", folder, skip=("*.ipynb",))
    for script, tag in (("main_sym.py", "0"), ("main_elbo.py", "1")):
        run_script(folder, script, "--call_prefix", tag, "--data_root", str(data), *TINY_RUN)
    return folder


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> str:
    """A kernelspec for this interpreter that imports this checkout's symvae.

    The installed 'python3' spec may name another interpreter, or a symvae
    installed elsewhere; this one cannot.
    """
    home = tmp_path_factory.mktemp("jupyter")
    spec = home / "kernels" / "symvae-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "symvae tests", "language": "python",
        "env": {"PYTHONPATH": str(REPO), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "OMP_NUM_THREADS": "1"}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(home))
        yield "symvae-test"


# --- parsing ------------------------------------------------------------------

def test_read_log_skips_comments_and_a_partial_last_line(tmp_path):
    path = tmp_path / "log-0.txt"
    path.write_text("# sym mnist-ladder --call_prefix 0\n"
                    "time: 1.5 count: 100 len: 0.02 ploss1: 0.5 plossx: 0.3\n"
                    "# resumed from models/m_0.pt at count 100\n"
                    "time: 3.0 count: 200 len: 0.03 ploss1: 0.4 plossx: 0.2\n"
                    "time: 4.5 count: 300 len: 0.0")
    rows = plot.read_log(path)
    assert rows == [{"time": 1.5, "count": 100, "len": 0.02, "ploss1": 0.5, "plossx": 0.3},
                    {"time": 3.0, "count": 200, "len": 0.03, "ploss1": 0.4, "plossx": 0.2}]


def test_read_log_by_names_not_columns(tmp_path):
    """Another name set, in another order, still lands under its names."""
    path = tmp_path / "log-1.txt"
    path.write_text("time: 2 count: 100 len: 0.1 klloss: 0.7 dloss: 0.25\n"
                    "count: 200 time: 4 dloss: 0.2 len: 0.1 klloss: 0.6\n")
    run = plot.Run("1", plot.read_log(path))
    assert run.names() == ["len", "klloss", "dloss"]
    counts, values = run.series("dloss")
    np.testing.assert_allclose(counts, [100, 200])
    np.testing.assert_allclose(values, [0.25, 0.2])
    np.testing.assert_allclose(run.rate()[1], [50.0])


def test_read_log_resume_replaces_repeated_counts(tmp_path):
    path = tmp_path / "log-0.txt"
    path.write_text("".join(f"time: {c} count: {c} ploss: {c}\n" for c in (100, 200, 300))
                    + "# resumed from models/m_0.pt at count 200\n"
                    + "".join(f"time: {c} count: {c} ploss: {-c}\n" for c in (300, 400)))
    counts, values = plot.Run("0", plot.read_log(path)).series("ploss")
    np.testing.assert_allclose(counts, [100, 200, 300, 400])
    np.testing.assert_allclose(values, [100, 200, -300, -400])


@pytest.mark.parametrize("line", ["time: 1 count: 2 ploss", "time: 1 count: 2 ploss: x",
                                  "time 1 count 2", "ploss: 0.5 qloss: 0.4"])
def test_read_log_warns_about_a_broken_line(tmp_path, line):
    path = tmp_path / "log-0.txt"
    path.write_text(f"{line}\ntime: 1 count: 100 ploss: 0.5\n")
    with pytest.warns(UserWarning, match=r"log-0.txt:1: not a"):
        rows = plot.read_log(path)
    assert rows == [{"time": 1, "count": 100, "ploss": 0.5}]


def test_load_runs_reads_stats_and_names_a_missing_log(tmp_path):
    write_log(tmp_path, "a", ("ploss1", "pmi1"))
    (tmp_path / "logs" / "statq0-a.txt").write_text("0.5\n0.25\n0\n")  # an older, descending file
    (tmp_path / "logs" / "statq0-ab.txt").write_text("9\n")  # another tag's file
    (run,) = plot.load_runs(["a"], tmp_path)
    assert list(run.stats) == ["q0"]
    np.testing.assert_allclose(run.stats["q0"], [0, 0.25, 0.5])  # drawn ascending
    assert run.image is None
    with pytest.raises(FileNotFoundError, match=r"log-b.txt: no log for tag 'b'"):
        plot.load_runs(["a", "b"], tmp_path)


def test_figures_split_losses_from_mi(tmp_path):
    write_log(tmp_path, "0", ("ploss", "qloss"))
    write_log(tmp_path, "1", ("dloss", "kl0loss", "pmi1", "qmi0"), method="elbo")
    runs = plot.load_runs(["0", "1"], tmp_path)
    titles = [ax.get_title() for ax in plot.losses(runs).axes if ax.get_title()]
    assert titles == ["len: mean squared parameter", "ploss", "qloss", "dloss", "kl0loss"]
    assert [ax.get_title() for ax in plot.mi_curves(runs).axes if ax.get_title()] == \
        ["pmi1", "qmi0"]
    assert plot.mi_profiles(runs) is None
    assert plot.mi_curves(runs[:1]) is None
    legend = [t.get_text() for t in plot.losses(runs).axes[0].get_legend().get_texts()]
    assert legend == ["symmetric 0", "ELBO 1"]


def test_a_run_keeps_its_colour_in_every_panel(tmp_path):
    # run 0 is missing from the panels of run 1's names: the colour cycle must not shift
    write_log(tmp_path, "0", ("ploss", "qloss"))
    write_log(tmp_path, "1", ("dloss", "kl0loss"), method="elbo")
    write_log(tmp_path, "2", ("ploss",))
    runs = plot.load_runs(["0", "1", "2"], tmp_path)
    colours: dict[str, set] = {}
    for fig in (plot.losses(runs), plot.rate(runs)):
        for ax in fig.axes:
            for line in ax.get_lines():
                colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert sorted(colours) == ["ELBO 1", "symmetric 0", "symmetric 2"]
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len(set.union(*colours.values())) == 3


# --- the PNG command ----------------------------------------------------------

def run_plot(folder: Path, *tags: str) -> subprocess.CompletedProcess:
    from conftest import run_script
    return run_script(folder, "-m", "symvae", "plot", "--call_prefix", *tags, check=False)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def test_png_command_writes_every_figure(trained):
    proc = run_plot(trained, "0", "1")
    assert proc.returncode == 0, proc.stderr
    names = ("losses", "mi", "mi_profiles", "images", "rate")
    paths = [trained / "images" / f"plot_{name}_0-1.png" for name in names]
    assert proc.stdout.split("\n")[:-1] == [f"wrote images/{p.name}" for p in paths]
    panel = (plot.PANEL_INCHES[0] * plot.DPI, plot.PANEL_INCHES[1] * plot.DPI)
    # losses: len plus four symmetric and three ELBO losses = 8 panels, 3 to a row
    assert png_size(paths[0]) == (3 * panel[0], 3 * panel[1])
    assert png_size(paths[1]) == (3 * panel[0], panel[1])  # pmi1 qmi0 qmi1
    assert png_size(paths[2]) == (3 * panel[0], panel[1])  # statp1 statq0 statq1
    # two runs' grids at 1.5 panel widths, each with a title line above it
    grid_w, grid_h = png_size(trained / "images" / "img_0.png")
    width, height = png_size(paths[3])
    assert width == 1.5 * panel[0]
    assert height == pytest.approx(2 * (plot.TITLE_INCHES * plot.DPI + width * grid_h / grid_w),
                                   abs=1)
    assert png_size(paths[4]) == panel
    for path in paths:
        with Image.open(path) as im:
            assert np.asarray(im.convert("L")).std() > 10  # drawn on, not blank


def test_png_command_names_a_tag_without_a_log(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    for tags, message in ((["0", "7"], "log-7.txt: no log for tag '7'"),
                          (["../0"], "--call_prefix '../0'")):
        with pytest.raises(SystemExit) as exit_:
            plot.main(["--call_prefix", *tags])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and message in err


# --- notebooks ------------------------------------------------------------------

def reverse_runs(folder: Path) -> None:
    """Logs of the reverse experiment's names (no MI statistics there) for tags 0 and 1."""
    shutil.rmtree(folder / "logs")
    write_log(folder, "0", ("ploss", "qloss"))
    write_log(folder, "1", ("dloss", "klloss"))


def test_every_folder_has_both_notebooks():
    folders = {nb.parent.name for nb in NOTEBOOKS}
    assert folders == {"mnist-ladder", "mnist-reverse", "fmnist-ladder"}
    assert len(NOTEBOOKS) == 6
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
            f"{path}: store notebooks without outputs"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_runs_headless(notebook, trained, kernel, tmp_path):
    folder = tmp_path / notebook.parent.name
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("models", "__pycache__"))
    if notebook.parent.name == "mnist-reverse":
        reverse_runs(folder)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=300,
                   resources={"metadata": {"path": str(folder)}}).execute()
    shown = [cell.source for cell in nb.cells if cell.cell_type == "code"
             for out in cell.outputs if "image/png" in out.get("data", {})]
    plots = [cell.source for cell in nb.cells if cell.source.startswith("plot.")]
    assert shown == plots  # every plotting cell shows exactly one figure
    errors = [out for cell in nb.cells for out in cell.get("outputs", [])
              if out.output_type == "error"]
    assert not errors
