"""The raw files of a dataset and their checks: the official checksums, a folder's own
MD5SUMS, and the verification every load and `symvae fetch --verify` run. Below both the
loader (symvae.data.datasets) and the fetch (symvae.data.fetch), which each use it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from symvae.ground import REPO_ROOT, atomic_write, md5_file

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fmnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

class DataError(RuntimeError):
    """A dataset that cannot be used; the message names the file or folder and the fix."""


class DataMissing(DataError):
    """The dataset is not under the data root and could not be fetched."""


# The custom route: a raw folder may carry its own checksums (`md5sum` output) for data
# that are not the official files, e.g. small synthetic sets.
CHECKSUMS_FILE = "MD5SUMS"
# md5 of each raw file, remembered against its size and modification time
DIGEST_CACHE = ".verified.json"
IMAGE_BYTES = 28 * 28
OFFICIAL_COUNTS = {"train": 60000, "t10k": 10000}


def default_data_root() -> Path:
    return Path(os.environ.get("SYMVAE_DATA") or REPO_ROOT / "data")


def check_uncompressed(raw: Path) -> None:
    """Refuse gzipped IDX files without their uncompressed versions: torchvision reads only
    those, and would otherwise find no data (and the official set would be fetched)."""
    if not raw.is_dir():
        return
    packed = [p.name for p in sorted(raw.glob("*-ubyte.gz")) if not p.with_suffix("").exists()]
    if packed:
        raise DataError(f"{raw}: {packed[0]} is gzipped; decompress the IDX files there "
                        "(`gunzip -k *-ubyte.gz`) and list the uncompressed ones in MD5SUMS")


def expected_digests(name: str, raw: Path) -> dict[str, str]:
    """file name -> md5: raw/MD5SUMS when the folder has one, else the official checksums."""
    listed = raw / CHECKSUMS_FILE
    if not listed.is_file():
        return MD5[name]
    fix = "write it with `md5sum *-ubyte > MD5SUMS` inside raw/"
    try:
        text = listed.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{listed}: not an md5sum list (byte {err.start} is not UTF-8 text); "
                        f"{fix}") from None
    digests = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{32}) [ *](\S.*)", line.strip())
        if match is None:
            raise DataError(f"{listed}:{number}: not an md5sum line (`MD5  FILE`): "
                            f"{line.strip()[:60]!r}; {fix}")
        digests[match.group(2)] = match.group(1).lower()
    return digests


def official_size(fname: str) -> int:
    """Bytes of an official IDX file: header, then one byte per pixel or label."""
    n = OFFICIAL_COUNTS[fname.split("-")[0]]
    return 16 + n * IMAGE_BYTES if "images" in fname else 8 + n


def verify_raw(name: str, raw: Path, full: bool = False) -> int:
    """Refuse raw files that differ from their checksums; missing files are left to the fetch.
    Returns how many files were checked.

    Cheap on every load: a size check, then the md5 only when the file's size or
    modification time differs from those remembered in raw/.verified.json. So bit rot that
    keeps both is not seen there; `full` (`symvae fetch --verify`) computes every md5.
    """
    try:
        if not raw.is_dir():
            return 0
        expected = expected_digests(name, raw)
        official = not (raw / CHECKSUMS_FILE).is_file()
        cache = _read_cache(raw)
        remembered = {} if full else cache
        fresh = {}
        for fname, want in expected.items():
            path = raw / fname
            if not path.is_file():
                continue
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
            if official and st.st_size != official_size(fname):
                got = f"{st.st_size} bytes, expected {official_size(fname)}"
            else:
                known = remembered.get(fname)
                md5 = known[2] if known and known[:2] == stamp else md5_file(path)
                fresh[fname] = [*stamp, md5]
                got = None if md5 == want else f"md5 {md5}, expected {want}"
            if got:
                raise DataError(f"{path} is damaged ({got}); delete it and run `python -m "
                                f"symvae.data fetch {name} --root {raw.parent.parent}`")
    except PermissionError as err:
        raise DataError(f"{err.filename or raw}: permission denied; make the data readable or "
                        "point --data_root / SYMVAE_DATA elsewhere") from None
    if fresh != {k: v for k, v in cache.items() if k in fresh}:
        _write_cache(raw, fresh)
    return len(fresh)


def _read_cache(raw: Path) -> dict:
    """file name -> [size, mtime_ns, md5] remembered; entries of any other form are dropped
    (it is only a cache: their files are checked in full)."""
    try:
        cache = json.loads((raw / DIGEST_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict):
        return {}
    return {k: v for k, v in cache.items() if isinstance(v, list) and len(v) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) for n in v[:2])
            and isinstance(v[2], str)}


def _write_cache(raw: Path, digests: dict) -> None:
    try:  # only a speed-up: a read-only data root is checked in full each time
        atomic_write(raw / DIGEST_CACHE, lambda f: f.write(json.dumps(digests).encode()))
    except OSError:
        pass
