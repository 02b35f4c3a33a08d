"""`symvae COMMAND`: one command for every tool, each its module's own command line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from symvae.__main__ import COMMANDS, main


def test_help_lists_every_command_in_one_screen(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert len(out.splitlines()) <= 24


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_reaches_its_tool(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_an_unknown_command_is_one_line(capsys):
    assert main(["fidd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'fidd'" in err and "fid" in err
    assert main([]) == 2  # no command: the list, on stderr


def test_the_installed_console_script_and_python_m(tmp_path):
    """`python -m symvae` always; the `symvae` script where the package is installed."""
    runs = [[sys.executable, "-m", "symvae", "--help"]]
    script = Path(sys.executable).with_name("symvae")
    if script.is_file():
        runs.append([str(script), "--help"])
    for cmd in runs:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=False, env={"PYTHONPATH": str(REPO), "PATH": ""})
        assert proc.returncode == 0 and "gpu-check" in proc.stdout, proc.stderr


def test_an_unforeseen_failure_is_one_line_through_the_command(monkeypatch, capsys, tmp_path):
    """bench's main() carries no handler of its own: the command gives it the outer one."""
    from symvae import entry
    from symvae.reproduce import bench

    def broken(argv):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(bench, "main", broken)
    monkeypatch.setattr(entry.tempfile, "gettempdir", lambda: str(tmp_path))
    assert main(["bench"]) == entry.UNEXPECTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError" in err
