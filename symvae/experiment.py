"""Find an experiment folder's HVAE class, for tools that run outside its entry scripts."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from symvae.ground import REPO_ROOT
from symvae.model.hvae import HVAE

EXPERIMENTS = ("mnist-ladder", "mnist-reverse", "fmnist-ladder")


def load_model_class(folder: str | Path) -> type[HVAE]:
    """Import FOLDER/hvae.py (and the dataset module it imports) and return its HVAE class.

    Each folder is imported under its own module name, so several experiments
    can live in one process even though their files share names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        folder = REPO_ROOT / folder
    folder = folder.resolve()
    path = folder / "hvae.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no hvae.py; run inside an experiment folder "
                                f"({', '.join(EXPERIMENTS)})")
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        name = f"symvae_experiment_{folder.resolve().name.replace('-', '_')}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
        for added in set(sys.modules) - before:  # the folder's plain-named modules
            if str(getattr(sys.modules[added], "__file__", "") or "").startswith(str(folder)):
                del sys.modules[added]
    return module.HVAE
