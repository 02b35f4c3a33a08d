"""Watching training: the curves and images of one or more runs, for notebooks and as PNGs.

A run is what `main_sym.py` / `main_elbo.py --call_prefix TAG` leaves in the
experiment folder: logs/log-TAG.txt, logs/stat*-TAG.txt (ladder models) and
images/img_TAG.png. Log lines are read by the names they carry
(`time: T count: C len: L ploss1: v ...`), so any experiment's log plots.

    python -m symvae plot --call_prefix 0 1     # inside an experiment folder

writes images/plot_{losses,mi,mi_profiles,images,rate}_0-1.png.
"""
from __future__ import annotations

import argparse
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from symvae.entry import cannot_write, details_beside, entry_point, parse_args

# Beyond any value a training log holds (losses in nats, counts, seconds); an axis over values
# near the float limit (1e308) overflows in matplotlib. Lines with larger values are skipped.
MAX_LOG_VALUE = 1e100
MAX_GRID_PIXELS = 4096 * 4096  # a training grid is 10 images wide: a few hundred pixels
# Names every log line starts with; everything after them is a logged quantity.
CLOCK = ("time", "count")
# Mutual-information averages as train.mi_log_name writes them: bit group 'q0' -> 'qmi0'.
MI_NAME = re.compile(r"[pq]mi\d+")
PANEL_TITLES = {"len": "len: mean squared parameter"}
# The log's first line names the method: `# sym mnist-ladder --call_prefix 0 ...`.
METHOD_LINE = re.compile(r"# (sym|elbo) ")
METHOD_NAMES = {"sym": "symmetric", "elbo": "ELBO"}
PANEL_INCHES = (4.0, 3.0)
TITLE_INCHES = 0.3
PANELS_PER_ROW = 3
DPI = 100


class RunFilesError(ValueError):
    """A run's log, statistics or image grid that cannot be read; the message names the file."""


@dataclass
class Run:
    """One run's logged rows (name -> value, oldest first), MI profiles and image grid."""

    tag: str
    rows: list[dict[str, float]]
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # bit group -> sorted MI per bit
    image: Path | None = None
    method: str | None = None  # sym or elbo, from the log's first line

    @property
    def label(self) -> str:
        """How figures name the run: its method and tag, e.g. `symmetric 0`."""
        return f"{METHOD_NAMES.get(self.method or '', 'run')} {self.tag}"

    def names(self) -> list[str]:
        """The logged quantities, in the order the log first names them."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(n for n in row if n not in CLOCK))
        return list(seen)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(iteration counts, values) of the rows that log `name`."""
        pairs = [(row["count"], row[name]) for row in self.rows if name in row]
        counts, values = zip(*pairs) if pairs else ((), ())
        return np.asarray(counts, float), np.asarray(values, float)

    def rate(self) -> tuple[np.ndarray, np.ndarray]:
        """(iteration counts, iterations per second since the previous log line)."""
        count = np.asarray([row["count"] for row in self.rows], float)
        time = np.asarray([row["time"] for row in self.rows], float)
        dc, dt = np.diff(count), np.diff(time)
        keep = dt > 0  # two lines written within the clock's 0.1 s resolution
        return count[1:][keep], dc[keep] / dt[keep]


def parse_line(line: str) -> dict[str, float] | None:
    """`name: value name: value ...` -> {name: value}; None unless it has time and count."""
    tokens = line.split()
    if len(tokens) % 2:
        return None
    row = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        if not name.endswith(":") or len(name) < 2:
            return None
        try:
            row[name[:-1]] = float(value)
        except ValueError:
            return None
        if not abs(row[name[:-1]]) <= MAX_LOG_VALUE:  # also NaN
            return None
    return row if all(n in row for n in CLOCK) else None


def read_log(path: Path) -> list[dict[str, float]]:
    """The value lines of a training log, skipping '#' milestone lines.

    A last line without its newline is still being written and is left out.
    After a resume from an earlier checkpoint the log repeats counts; the newer
    lines replace the older ones from that count on.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RunFilesError(f"{path}: not a training log (byte {err.start} is not UTF-8 text); "
                            "is it the log-TAG.txt a training run wrote? Move it away") from None
    lines = text.split("\n")
    if lines and lines[-1]:
        lines.pop()  # every complete line ends with a newline
    rows: list[dict[str, float]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = parse_line(line)
        if row is None:
            warnings.warn(f"{path}:{number}: not a `name: value ...` log line; skipped",
                          stacklevel=2)
            continue
        while rows and rows[-1]["count"] >= row["count"]:
            rows.pop()
        rows.append(row)
    return rows


def read_method(path: Path) -> str | None:
    """sym or elbo, as the log's first milestone line names it (None if it does not)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        match = METHOD_LINE.match(f.readline())
    return match.group(1) if match else None


def read_stats(folder: Path, tag: str) -> dict[str, np.ndarray]:
    """{bit group: MI per bit, ascending} from logs/stat{group}-TAG.txt (ladder models only).

    The files are written ascending, as the authors write them; sorting here also
    draws files of older runs (written descending) the same way."""
    stats = {}
    for path in sorted((Path(folder) / "logs").glob(f"stat*-{tag}.txt")):
        group = path.name[len("stat"):-len(f"-{tag}.txt")]
        try:
            values = [float(v) for v in path.read_text(encoding="utf-8").split()]
        except (ValueError, UnicodeDecodeError):
            raise RunFilesError(f"{path}: not a list of numbers; delete it (the run's next "
                                "checkpoint writes it again)") from None
        if group and values:
            stats[group] = np.sort(np.asarray(values))
    return stats


def load_runs(tags: list[str] | str, folder: str | Path = ".") -> list[Run]:
    """The runs of an experiment folder by tag; FileNotFoundError names a tag without a log."""
    folder = Path(folder)
    runs = []
    for tag in [tags] if isinstance(tags, str) else tags:
        tag = str(tag)
        log = folder / "logs" / f"log-{tag}.txt"
        if not log.is_file():
            raise FileNotFoundError(f"{log}: no log for tag {tag!r}; train it first "
                                    f"(--call_prefix {tag}) or run this inside its experiment "
                                    "folder")
        image = folder / "images" / f"img_{tag}.png"
        if image.is_file():
            check_image(image)
        runs.append(Run(tag, read_log(log), read_stats(folder, tag),
                        image if image.is_file() else None, read_method(log)))
    return runs


def check_image(path: Path) -> None:
    """RunFilesError unless `path` is an image file PIL can read."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():  # a decompression bomb is an error, not a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()  # the chunks' checksums
            with Image.open(path) as im:
                if im.width * im.height > MAX_GRID_PIXELS:
                    raise ValueError(f"{im.width}x{im.height} pixels")
                im.load()  # the data stream itself
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RunFilesError(f"{path}: not a readable image grid ({type(err).__name__}"
                            f"{': ' + str(err).splitlines()[0][:80] if str(err) else ''}); "
                            "delete it (the run's next checkpoint writes it again)") from None


def figure_paths(folder: Path, tags: list[str]) -> dict[str, Path]:
    """images/plot_NAME_TAGS.png of each figure."""
    joined = "-".join(tags)
    return {name: Path(folder) / "images" / f"plot_{name}_{joined}.png" for name in FIGURES}


def _grid(n: int) -> tuple[Figure, list]:
    """A figure of n panels, PANELS_PER_ROW to a row, each PANEL_INCHES large."""
    cols = min(n, PANELS_PER_ROW)
    rows = -(-n // cols)
    fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, list(axes[:n])


def colour(runs: list[Run], run: Run) -> str:
    """A run's colour, the same in every panel of every figure, whichever panels it has."""
    return f"C{runs.index(run) % 10}"


def _overlay(runs: list[Run], names: list[str], title: str) -> Figure | None:
    """One panel per logged name against iterations, each run a labelled line."""
    if not names:
        return None
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        for run in runs:
            counts, values = run.series(name)
            if len(counts):
                ax.plot(counts, values, label=run.label, color=colour(runs, run))
        ax.set_title(PANEL_TITLES.get(name, name))
        ax.ticklabel_format(axis="y", useOffset=False)  # e.g. qloss0 near log 2 reads as such
        ax.set_xlabel("iteration")
        ax.legend(title="method, tag", fontsize="small")
    fig.suptitle(title)
    return fig


def _all_names(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(n for run in runs for n in run.names()))


def losses(runs: list[Run]) -> Figure | None:
    """Every logged quantity except the MI averages (the losses and `len`) against iterations."""
    names = [n for n in _all_names(runs) if not MI_NAME.fullmatch(n)]
    return _overlay(runs, names, "losses (running averages)")


def mi_curves(runs: list[Run]) -> Figure | None:
    """The mutual-information averages (pmi1, qmi0, qmi1) against iterations; None if unlogged."""
    names = [n for n in _all_names(runs) if MI_NAME.fullmatch(n)]
    return _overlay(runs, names, "mutual information per bit (nats)")


def mi_profiles(runs: list[Run]) -> Figure | None:
    """The sorted per-bit mutual information of each bit group; None without stat files."""
    groups = list(dict.fromkeys(g for run in runs for g in run.stats))
    if not groups:
        return None
    fig, axes = _grid(len(groups))
    for ax, group in zip(axes, groups):
        for run in runs:
            if group in run.stats:
                ax.plot(np.arange(1, len(run.stats[group]) + 1), run.stats[group],
                        label=run.label, color=colour(runs, run))
        ax.set_title(f"stat{group}: MI of each bit, ascending")
        ax.set_xlabel("bit (by rank)")
        ax.legend(title="method, tag", fontsize="small")
    fig.suptitle("per-bit mutual information at the last checkpoint")
    return fig


def images(runs: list[Run]) -> Figure:
    """The latest image grid of each run: data, reconstructions, single shots, limiting chain."""
    from PIL import Image
    grids = []
    for run in runs:
        if run.image is None:
            grids.append(None)
            continue
        with Image.open(run.image) as im:
            grids.append(np.asarray(im.convert("L")))
    width = PANEL_INCHES[0] * 1.5
    # each panel as tall as its grid at the figure's width, plus a line of title
    heights = [TITLE_INCHES + (0 if g is None else width * g.shape[0] / g.shape[1])
               for g in grids]
    fig = Figure(figsize=(width, sum(heights)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(runs), 1, squeeze=False, height_ratios=heights).ravel()
    for ax, run, grid in zip(axes, runs, grids):
        ax.set_axis_off()
        if grid is None:
            ax.set_title(f"{run.label}: no images/img_{run.tag}.png yet", fontsize="small")
            continue
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{run.label}: data, reconstructions, single shots, limiting chain",
                     fontsize="small", color=colour(runs, run))
    return fig


def rate(runs: list[Run]) -> Figure:
    """Training speed: iterations per second between consecutive log lines."""
    fig, (ax,) = _grid(1)
    for run in runs:
        ax.plot(*run.rate(), label=run.label, color=colour(runs, run))
    ax.set_title("iterations per second")
    ax.set_xlabel("iteration")
    ax.set_ylim(bottom=0)
    ax.legend(title="method, tag", fontsize="small")
    return fig


FIGURES = {"losses": losses, "mi": mi_curves, "mi_profiles": mi_profiles,
           "images": images, "rate": rate}


def save_figures(runs: list[Run], folder: Path) -> list[Path]:
    """Write every figure that has something to show as images/plot_NAME_TAGS.png."""
    (Path(folder) / "images").mkdir(parents=True, exist_ok=True)
    paths = figure_paths(folder, [run.tag for run in runs])
    written = []
    for name, make in FIGURES.items():
        fig = make(runs)
        if fig is None:
            continue
        path = paths[name]
        fig.savefig(path, dpi=DPI)
        written.append(path)
    return written


@entry_point("plot")
def main(argv: list[str] | None = None) -> int:
    from symvae.cli import check_tag, ensure_dirs, fail  # here: a notebook needs no torch
    parser = argparse.ArgumentParser(
        prog="python -m symvae plot",
        description="Write the training figures of one or more runs as PNGs under images/ "
                    "(run inside the experiment folder).")
    parser.add_argument("--call_prefix", nargs="+", required=True, metavar="TAG",
                        help="tags of the runs to overlay, e.g. --call_prefix 0 1")
    args = parse_args(parser, argv)
    for tag in args.call_prefix:
        check_tag(tag, "--call_prefix")
    folder = Path.cwd()
    details_beside(folder / "logs", "error-plot")  # an unforeseen failure's traceback
    longest = max(len(p.name.encode()) for p in figure_paths(folder, args.call_prefix).values())
    limit = name_limit(folder)
    if longest > limit:
        fail(f"--call_prefix: the figure file names would be {longest} bytes long, over this "
             f"file system's limit of {limit}; plot fewer or shorter tags at once")
    try:
        runs = load_runs(args.call_prefix, folder)
    except (FileNotFoundError, RunFilesError) as err:
        fail(str(err))
    ensure_dirs(folder, ("images",))
    try:
        written = save_figures(runs, folder)
    except OSError as err:
        fail(f"{cannot_write(err, 'a figure')} in images/", code=4)
    for path in written:
        print(f"wrote {path.relative_to(folder)}")
    return 0


def name_limit(folder: Path) -> int:
    """The longest file name the folder's file system takes (255 where it cannot be asked)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


if __name__ == "__main__":
    raise SystemExit(main())
