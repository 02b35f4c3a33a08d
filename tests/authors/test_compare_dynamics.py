"""scripts/compare_dynamics.py: the dynamics table of docs/fidelity.md, from both codes' logs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_dynamics.py"


def write_log(path: Path, rows: dict[int, tuple[float, float]], authors: bool) -> Path:
    """A log in the code's format; rows maps the logged count to (plossx, qmi1)."""
    lines = ["# Starting" if authors else "# sym mnist-ladder --seed 1"]
    for count, (plossx, qmi1) in rows.items():
        lines.append(f"time: 1.0 count: {count} len: 0.0005 ploss1: 0.5 plossx: {plossx} "
                     f"qloss0: 0.69 qmi1: {qmi1}")
    lines.append("time: 2.0 count: 9")  # a line without figures adds no values to any row
    path.write_text("\n".join(lines) + "\n")
    return path


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False)


def test_aligns_counts_and_reports_spread_difference_and_onset(tmp_path):
    ours = [write_log(tmp_path / f"o{i}.txt", {100: (0.5, 0.0), 200: (v, q)}, False)
            for i, (v, q) in enumerate([(0.30, 0.05), (0.32, 0.2)])]
    # the authors log the 0-based index of the last update: 199 is after 200 updates
    theirs = [write_log(tmp_path / f"a{i}.txt", {99: (0.5, 0.0), 199: (v, 0.01)}, True)
              for i, v in enumerate([0.26, 0.30])]
    proc = compare("--ours", *map(str, ours), "--theirs", *map(str, theirs),
                   "--at", "200", "--names", "plossx")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| plossx | 200"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # means 0.31 and 0.28, sample sds 0.0141 and 0.0283; s.e. sqrt(.0002/2 + .0008/2) = 0.0224
    assert cells[2:] == ["0.3100 ± 0.0141", "0.2800 ± 0.0283", "+0.0300 ± 0.0224"]
    assert "qmi1 > 0.1, ours: not by 200, 200" in proc.stdout
    assert "qmi1 > 0.1, authors: not by 200, not by 200" in proc.stdout


def test_one_code_alone_and_no_logs(tmp_path):
    log = write_log(tmp_path / "a.txt", {999: (0.33, 0.2)}, True)
    proc = compare("--theirs", str(log), "--at", "1000", "--names", "plossx")
    assert proc.returncode == 0, proc.stderr
    assert "| plossx | 1000 | – | 0.3300 | – |" in proc.stdout
    assert "authors: 1000" in proc.stdout
    assert "ours: no runs" in proc.stdout
    proc = compare("--at", "1000")
    assert proc.returncode == 2 and "no logs" in proc.stderr
