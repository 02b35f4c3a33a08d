"""Running the authors' scripts beside ours: in a scratch copy that sees our data, never writing
into their checkout (here a stand-in checkout: their code is not part of this repository)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# What their main_sym.py needs of its folder: ./data/MNIST (torchvision's layout) and the
# right to write its logs, models and images next to itself.
STAND_IN = '''
import os
assert os.path.isdir("data/MNIST/raw"), "no ./data/MNIST"
for d in ("logs", "models", "images"):
    os.makedirs(d, exist_ok=True)
open("logs/log_bench.txt", "w").write("ran\\n")
'''


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_their_scripts_run_in_a_scratch_copy_that_sees_our_data(tmp_path, data_root):
    checkout = tmp_path / "authors"
    (checkout / "mnist-ladder").mkdir(parents=True)
    (checkout / "mnist-ladder" / "hvae.py").write_text("# their model\n")
    (checkout / "mnist-ladder" / "main_sym.py").write_text(STAND_IN)
    before = tree(checkout)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "symvae.authors.scripts", "--ref", str(checkout), "--experiment",
           "mnist-ladder", "--method", "sym", "--device", "cpu", "--data_root", str(data_root),
           "--workdir", str(work), "--bs", "8", "--iters", "1", "--warmup", "0",
           "--threads", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"times": [], "cpu": []}
    assert (work / "logs" / "log_bench.txt").read_text() == "ran\n"
    assert tree(checkout) == before  # their checkout is read, never written
