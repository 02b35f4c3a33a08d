"""results/PRESET/table.md, table.json and table.png: our FIDs beside the authors', per row.

One line per experiment x method: our random-code and limiting FIDs (mean ± sd over the seeds
that finished), the authors' figures, the final qmi0/qmi1 (is the latent code in use at all),
iterations, wall time per seed, device and commit.
"""
from __future__ import annotations

import io
import json
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from symvae.evaluate.metrics import RECORD_FIGURES
from symvae.learn import checkpoint as ckpt_io
from symvae.reproduce.grid import METHOD_NAMES, SEED_SETTINGS, Row
from symvae.reproduce.stages import STAGES, Options, RowStateError, is_done, read_state, row_folder

FIDS = ("random_code_fid", "limiting_fid")


def mean_sd(values: list[float]) -> tuple[float, float | None] | None:
    """(mean, sample sd) of the values; sd is None for a single value, all None for none."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def run_result(row: Row, opts: Options) -> dict:
    """What one seed's row has produced so far."""
    try:
        stages = read_state(row_folder(opts, row), row)["stages"]
    except RowStateError:
        stages = {}
    train, fid = stages.get("train", {}), stages.get("fid", {})
    pending = next((s for s in STAGES if s not in stages), None)
    done = is_done(row, opts)
    wall = sum(v for v in (train.get("train_seconds"), stages.get("generate", {}).get("seconds"),
                           fid.get("seconds")) if v is not None)
    return {"seed": row.seed, "done": done, "pending": None if done else pending or "rerun",
            **{k: fid.get(k) if done else None for k in (*FIDS, *RECORD_FIGURES, "metric_n")},
            "qmi0": train.get("qmi0"), "qmi1": train.get("qmi1"),
            "iterations": train.get("iterations"), "wall_seconds": round(wall, 1) if done else None,
            "device": train.get("device"), "commit": train.get("commit"),
            "sizes": asdict(row.sizes)}


def summarize(rows: list[Row], opts: Options) -> list[dict]:
    """Table lines, one per experiment x method (in the order of `rows`), over its seeds."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.experiment, row.method), []).append(row)
    lines = []
    for (experiment, method), group in groups.items():
        runs = [run_result(r, opts) for r in group]
        done = [r for r in runs if r["done"]]
        line = {"experiment": experiment, "method": method, "seeds": [r.seed for r in group],
                "seeds_done": [r["seed"] for r in done]}
        for k in FIDS:
            line[k] = mean_sd([r[k] for r in done])
        for k in RECORD_FIGURES:
            line[k] = mean_sd([r[k] for r in done if r[k] is not None])
        line["authors_figures"] = dict(zip(FIDS, group[0].seed_figures, strict=True))
        for k in ("qmi0", "qmi1", "wall_seconds"):
            line[k] = mean_sd([r[k] for r in done if r[k] is not None])
        for k in ("iterations", "device", "commit"):
            line[k] = sorted({str(r[k]) for r in done})
        line["pending"] = sorted({r["pending"] for r in runs if not r["done"]})
        line["runs"] = runs
        lines.append(line)
    return lines


def _fmt(value: tuple[float, float | None] | None, spec: str = ".4f") -> str:
    if value is None:
        return "–"
    mean, sd = value
    return f"{mean:{spec}}" + (f" ± {sd:{spec}}" if sd is not None else "")


def duration(seconds: float) -> str:
    """Seconds in the unit a reader wants: s, min or h."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" \
        if seconds < 7200 else f"{seconds / 3600:.1f} h"


def markdown(preset: str, lines: list[dict], command: str) -> str:
    head = [f"# FID tables, preset `{preset}`", "",
            f"Command: `{command}`", "",
            (f"Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
             f"The authors' figures come from {SEED_SETTINGS}; ours from the sizes below. "
             "Ours is mean ± sd over the seeds that finished; wall time is per seed "
             "(training, sample grids and both FIDs). FID: lower is better."), "",
            ("| experiment | method | seeds | random code FID | authors' | limiting FID | authors' "
             "| qmi0 | qmi1 | iterations | wall time | device | commit |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    body = []
    for ln in lines:
        seeds = f"{len(ln['seeds_done'])}/{len(ln['seeds'])}"
        if ln["pending"]:
            seeds += f" (pending: {', '.join(ln['pending'])})"
        sf = ln["authors_figures"]
        body.append(
            f"| {ln['experiment']} | {METHOD_NAMES[ln['method']]} | {seeds} "
            f"| {_fmt(ln['random_code_fid'])} | {sf['random_code_fid']:.4f} "
            f"| {_fmt(ln['limiting_fid'])} | {sf['limiting_fid']:.4f} "
            f"| {_fmt(ln['qmi0'], '.2g')} | {_fmt(ln['qmi1'], '.2g')} "
            f"| {', '.join(ln['iterations'])} "
            f"| {duration(ln['wall_seconds'][0]) if ln['wall_seconds'] else '–'} "
            f"| {', '.join(ln['device'])} "
            f"| {', '.join(ln['commit'])} |")
    body += small_sample_table(lines)
    dims = sorted({r["sizes"]["fid_dims"] for ln in lines for r in ln["runs"]} - {2048})
    if dims:
        head.insert(4, f"**FIDs here use the {', '.join(map(str, dims))} features of an early "
                       "Inception block, not the 2048 pool3 features of the authors' figures: "
                       "they are not comparable with them.**\n")
    sizes = sorted({json.dumps(r["sizes"]) for ln in lines for r in ln["runs"]})
    tail = ["", "Sizes: " + "; ".join(
        ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in json.loads(s).items()) for s in sizes)]
    return "\n".join(head + body + tail) + "\n"


def kid_cell(line: dict, name: str) -> str:
    """KID of one image set: mean ± sd over the seeds, or one seed's value ± its standard
    error (marked se)."""
    value = line.get(f"{name}_kid")
    if value is None:
        return "–"
    if value[1] is not None or line.get(f"{name}_kid_se") is None:
        return _fmt(value)
    return f"{value[0]:.4f} ± {line[f'{name}_kid_se'][0]:.4f} (se)"


def small_sample_table(lines: list[dict]) -> list[str]:
    """KID, precision and recall beside the FIDs (symvae.evaluate.metrics), when the rows have
    them."""
    if not any(ln.get("limiting_kid") for ln in lines):
        return []
    out = ["", ("KID (unbiased at any number of images; lower is better) and precision / "
                "recall (Kynkäänniemi et al. 2019; recall falls when samples collapse onto "
                "few modes), from the FIDs' Inception features of the same images, mean ± sd "
                "over the seeds:"), "",
           ("| experiment | method | random code KID | limiting KID | random code precision "
            "| random code recall | limiting precision | limiting recall |"),
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for ln in lines:
        cells = [kid_cell(ln, "random_code"), kid_cell(ln, "limiting")]
        cells += [_fmt(ln.get(f"{s}_{f}"), ".3f") for s in ("random_code", "limiting")
                  for f in ("precision", "recall")]
        out.append(f"| {ln['experiment']} | {METHOD_NAMES[ln['method']]} | "
                   + " | ".join(cells) + " |")
    return out


FIGURE_DPI = 110


def figure(preset: str, lines: list[dict]):
    """Two panels (random code, limiting): ours (points, ± sd) and the authors' per row. FIDs
    on other Inception features than the authors' 2048 are drawn alone, under a warning."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    dims = sorted({r["sizes"]["fid_dims"] for ln in lines for r in ln["runs"]} - {2048})
    fig = Figure(figsize=(9, 1.2 + 0.45 * len(lines) + 0.3 * bool(dims)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    labels = [f"{ln['experiment']} {METHOD_NAMES[ln['method']]}" for ln in lines]
    ys = list(range(len(lines)))[::-1]
    for ax, key, title in zip(axes, FIDS, ("random code FID", "limiting FID"), strict=True):
        if not dims:
            ax.scatter([ln["authors_figures"][key] for ln in lines], ys, marker="D",
                       facecolors="none", edgecolors="tab:gray", label="authors' figure",
                       zorder=3)
        for y, ln in zip(ys, lines, strict=True):
            if ln[key] is not None:
                mean, sd = ln[key]
                ax.errorbar([mean], [y], xerr=[[sd or 0], [sd or 0]], fmt="o",
                            color="tab:blue" if ln["method"] == "sym" else "tab:orange",
                            capsize=3, zorder=4)
        ax.set_xscale("log")
        # labels at 1, 2, 5 x 10^k only: labelled minor ticks overlap on a narrow range
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(ys, labels)
    if dims:
        fig.suptitle(f"preset {preset}: ours (dots; blue symmetric, orange ELBO)\nFIDs on "
                     f"{', '.join(map(str, dims))} features of an early Inception block compare "
                     "with nothing (the authors' use 2048; not shown)", color="tab:red",
                     fontsize="medium")
    else:
        axes[0].legend(loc="best", fontsize="small")
        fig.suptitle(f"preset {preset}: ours (dots; blue symmetric, orange ELBO) vs the authors'")
    return fig


def figure_png(preset: str, lines: list[dict]) -> bytes:
    buf = io.BytesIO()
    figure(preset, lines).savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


def write_table(out: Path, preset: str, rows: list[Row], opts: Options,
                command: str) -> list[Path]:
    """Write table.md, table.json and table.png under OUT; returns their paths."""
    lines = summarize(rows, opts)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table.md": markdown(preset, lines, command).encode(),
             "table.json": (json.dumps({"preset": preset, "command": command,
                                        "authors_settings": SEED_SETTINGS, "rows": lines},
                                       indent=1) + "\n").encode(),
             "table.png": figure_png(preset, lines)}
    for name, data in files.items():
        ckpt_io.atomic_write(out / name, lambda f, d=data: f.write(d))
    return [out / name for name in files]
