"""`symvae convert`: checkpoints of the authors' scripts <-> symvae checkpoints
(the formats: symvae.learn.authors_format).

    python -m symvae convert --to authors|symvae IN OUT [--experiment NAME] [--overwrite]

`--to symvae` writes a bare state dict with our names; the MI statistics ride
along as `mi.GROUP.m` / `mi.GROUP.mi` (symvae.learn.checkpoint accepts both forms).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from symvae.entry import cannot_write, entry_point, parse_args
from symvae.experiment import EXPERIMENTS
from symvae.learn import checkpoint as ckpt_io
from symvae.learn.authors_format import (
    MI_PREFIX,
    ConvertError,
    adopt_bare,
    detect,
    from_authors,
    to_authors,
)


def _experiment_here(flag: str | None) -> str | None:
    if flag is not None:
        return flag
    here = Path.cwd()
    return here.name if here.name in EXPERIMENTS and (here / "hvae.py").is_file() else None


def convert_file(to: str, src: Path, dst: Path, experiment: str | None) -> str:
    """Convert checkpoint `src` into `dst` (direction `to`); returns what was written."""
    ckpt = ckpt_io.load(src)
    state = ckpt["model"]
    if to == "symvae":
        if ckpt.get("format") is not None or detect(state) is None:
            raise ConvertError(f"{src}: not an authors' checkpoint (already symvae's?); "
                               "use --to authors to go the other way")
        model, mi = from_authors(state, experiment)
        out = dict(model)
        for group, stats in mi.items():
            out.update({f"{MI_PREFIX}{group}.{k}": v for k, v in stats.items()})
        what = f"{detect(state)} model with symvae names"
    else:
        if ckpt.get("format") is None and detect(state) is not None:
            raise ConvertError(f"{src}: already an authors' checkpoint; use --to symvae to go "
                               "the other way")
        experiment = ckpt.get("experiment") or experiment
        if experiment is None:
            raise ConvertError(f"{src}: a bare state dict does not say its experiment; pass "
                               f"--experiment ({', '.join(EXPERIMENTS)}) or run inside its folder")
        if ckpt.get("format") is None:
            adopt_bare(ckpt, src, experiment)
        out = to_authors(ckpt["model"], ckpt.get("mi"), experiment)
        what = f"authors' {experiment} state dict"
    ckpt_io.save(dst, out)
    return f"wrote {dst}: {what}"


@entry_point("convert")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Convert checkpoints between the authors' scripts "
                                "and symvae.")
    p.add_argument("--to", required=True, choices=("authors", "symvae"),
                   help="the format to write")
    p.add_argument("src", type=Path, metavar="IN", help="checkpoint to read")
    p.add_argument("dst", type=Path, metavar="OUT", help="file to write")
    p.add_argument("--experiment", choices=EXPERIMENTS, default=None,
                   help="the model's experiment (default: the folder you run in, or the file's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parse_args(p, argv)
    from symvae.cli import fail
    if args.dst.is_dir():
        fail(f"{args.dst} is a folder; OUT is the file to write, e.g. {args.dst / 'm_0.pt'}")
    if args.dst.exists() and not args.overwrite:
        fail(f"{args.dst} already exists; pick another OUT or pass --overwrite")
    if args.dst.resolve() == args.src.resolve():
        fail(f"{args.dst}: OUT must differ from IN, so the original is kept")
    if not args.dst.parent.is_dir():
        fail(f"{args.dst.parent}: no such folder for OUT; create it first")
    if not os.access(args.dst.parent, os.W_OK | os.X_OK):
        fail(f"{args.dst.parent} is not writable; fix its permissions or pick another OUT")
    try:
        print(convert_file(args.to, args.src, args.dst, _experiment_here(args.experiment)))
    except ckpt_io.CheckpointError as err:
        fail(str(err))
    except OSError as err:  # e.g. a full disk: the atomic write left OUT as it was
        fail(f"{cannot_write(err, str(args.dst))}; {args.dst} is as it was", code=4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
