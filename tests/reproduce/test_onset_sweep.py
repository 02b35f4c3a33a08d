"""scripts/onset_sweep.py: onset from the logs (sustained, not transient) and its table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "onset_sweep.py"


def write_log(path: Path, qmi1: dict[int, float], end: str, flags: str = "--stepsize 0.001 "
              "--bs 64 --seed 2", qloss0: float = 0.6932) -> Path:
    lines = [f"# sym mnist-ladder --call_prefix t {flags} --niterations 3000"]
    lines += [f"time: 1.0 count: {c} len: 0.0005 ploss1: 0.3 plossx: 0.3 qloss0: {qloss0} "
              f"qloss1: 0.3 pmi1: 0.1 qmi0: 0.0001 qmi1: {q}" for c, q in qmi1.items()]
    path.write_text("\n".join([*lines, end]) + "\n")
    return path


def table(*args: str) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT), "table", *args], capture_output=True,
                         text=True, check=True)
    return out.stdout


def test_a_transient_rise_is_no_onset_and_a_sustained_one_is(tmp_path):
    counts = range(100, 2100, 100)
    transient = write_log(tmp_path / "a.txt", {c: 0.3 if 200 <= c <= 700 else 0.05
                                               for c in counts}, "# finished at count 2000")
    sustained = write_log(tmp_path / "b.txt", {c: 0.3 if c >= 600 else 0.05 for c in counts},
                          "# stopped by SIGTERM at count 2000; checkpoint saved",
                          flags="--stepsize 3e-3 --bs 256 --seed 1", qloss0=0.6)
    short = write_log(tmp_path / "c.txt", {c: 0.3 if c >= 1500 else 0.05 for c in counts},
                      "# finished at count 2000", flags="--stepsize 0.0001 --bs 64 --seed 3")
    (tmp_path / "statq1-b.txt").write_text("0.01\n0.2\n0.3\n")  # per-bit MI at the last save
    (tmp_path / "statq0-b.txt").write_text("0.0\n0.05\n")
    text = table(str(transient), str(sustained), str(short))
    assert "| 1e-3:64 | 2 | ours | finished | none by 2000 | none by 2000 | 0.300 (200) |" in text
    assert "| 3e-3:256 | 1 | ours | stopped | 600 | 100 | 0.300 (600) |" in text
    assert "| 2 | 0.51 | 0.05 |" in text  # z1 bits above 0.1, sums over z1 and z0
    # 500 updates to the end: too short to confirm
    assert "| 1e-4:64 | 3 | ours | finished | above since 1500, unconfirmed at 2000 |" in text
