"""`python -m symvae fid DIR1 DIR2`: FID between two folders of images, as pytorch-fid takes
them, for the sets generate_data.py writes (28x28 grey PNGs).

pytorch-fid itself hangs on a folder of one image, scores images of any size and colour, and
prints tracebacks on an empty or missing folder; here each of those is one line and exit 2,
before Inception is loaded.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from symvae.cli import fail, pick_device
from symvae.evaluate.frechet import frechet_distance, image_statistics, inception_features

# pytorch-fid's own IMAGE_EXTENSIONS
EXTENSIONS = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
SIZE = (28, 28)  # what generate_data.py writes
CHUNK = 1000  # images read and scored at a time


def image_files(folder: Path) -> list[Path]:
    """The folder's image files, refused in one line when there are not two or more."""
    if not folder.is_dir():
        fail(f"{folder}: no such folder of images; give the folders generate_data.py wrote "
             "(generated_data/MODE/images, sh_images, lim_images)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS
                   and p.is_file())
    if len(files) < 2:
        fail(f"{folder}: holds {len(files)} image(s); FID needs at least 2 per set")
    return files


def check_header(path: Path) -> None:
    """Refuse an image that is not 28x28 grey, reading its header only."""
    read_grey(path, pixels=False)


def read_grey(path: Path, pixels: bool = True) -> np.ndarray | None:
    """One 28x28 grey image as uint8, or one line naming the file."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if im.size != SIZE or im.mode not in ("L", "1"):
                fail(f"{path}: a {im.size[0]}x{im.size[1]} {im.mode} image; "
                     "symvae.evaluate.fid compares the 28x28 grey images generate_data.py writes")
            return np.asarray(im.convert("L"), dtype=np.uint8) if pixels else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        fail(f"{path}: not a readable image ({type(err).__name__}); move it away")


def chunks(files: list[Path]) -> Iterator[Tensor]:
    for i in range(0, len(files), CHUNK):
        grey = np.stack([read_grey(p) for p in files[i:i + CHUNK]])
        yield torch.from_numpy(grey).unsqueeze(1).float().div_(255)


def score_folders(args: argparse.Namespace, features) -> int:
    """FID of the two folders args.folders; `features` replaces Inception (tests)."""
    if len(args.folders) != 2:
        fail(f"give two folders of images, not {len(args.folders)}: python -m symvae fid "
             "DIR1 DIR2")
    folders = [Path(f) for f in args.folders]
    files = [image_files(f) for f in folders]
    for f in files:  # every file's header is checked before Inception is loaded
        for path in f:
            check_header(path)
    device = pick_device(args.device)
    if features is None:
        try:
            features = inception_features(device)
        except FileNotFoundError as err:
            fail(str(err))
    stats = [image_statistics((c.to(device) for c in chunks(f)), features, args.feature_bs)
             for f in files]
    fid = frechet_distance(*stats[0], *stats[1])
    print(f"FID {fid:.4f}: {folders[0]} ({len(files[0])} images) vs {folders[1]} "
          f"({len(files[1])} images)")
    return 0
