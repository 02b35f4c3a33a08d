"""scripts/readme_commands.py, which .ci/run uses to run the README's commands at tiny sizes, and
what `make demo` fetches."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("readme_commands",
                                              REPO / "scripts" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_commands)


def test_every_readme_command_is_run_tiny_or_skipped_for_a_reason():
    steps = readme_commands.plan(readme_commands.README.read_text())
    run = [argv for line, argv, note in steps if note == "run"]
    assert len(run) >= 10
    assert any(argv[0] == "symvae" for argv in run)  # the one command, as a reader types it
    for argv in run:
        assert argv[0] in ("python", "symvae")
        if "--niterations" in argv:
            assert int(argv[argv.index("--niterations") + 1]) <= 20, argv
        if "--chain_steps" in argv:
            assert int(argv[argv.index("--chain_steps") + 1]) <= 5, argv
    assert all(note.startswith("skipped: ") for line, argv, note in steps
               if not line.startswith(("python ", "symvae ", "cd ")))


def test_an_unknown_readme_command_stops_the_plan():
    with pytest.raises(ValueError, match="python nosuch.py"):
        readme_commands.plan("```bash\npython main_sym.py --nz0 3\npython nosuch.py\n```\n")


def test_symvae_lines_run_the_console_script_beside_the_interpreter(tmp_path):
    python = str(tmp_path / "venv" / "bin" / "python")
    steps = readme_commands.plan("```bash\nsymvae fid --call_prefix 0 --n 70000\n"
                                 "python generate.py --call_prefix 0\n```\n")
    (_, fid_argv, _), (_, generate_argv, _) = steps
    assert fid_argv[:2] == ["symvae", "fid"] and "--n" in fid_argv
    assert fid_argv[fid_argv.index("--n") + 1] == "64"  # TINY's "symvae fid" sizes
    assert readme_commands.executable(fid_argv, python)[:2] == \
        [str(tmp_path / "venv" / "bin" / "symvae"), "fid"]
    assert readme_commands.executable(generate_argv, python)[:2] == [python, "generate.py"]


def test_a_symvae_line_without_the_console_script_stops_before_running(tmp_path, capsys):
    steps = readme_commands.plan("```bash\nsymvae fid --call_prefix 0\n```\n")
    assert readme_commands.run(steps, str(tmp_path / "python")) == 2
    assert "no console script" in capsys.readouterr().err


def test_tiny_flags_replace_the_documented_values():
    assert readme_commands.override(["main_sym.py", "--niterations", "200000", "--seed", "1"],
                                    ["--niterations", "20", "--no_progress"]) == \
        ["main_sym.py", "--niterations", "20", "--seed", "1", "--no_progress"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_fetches_only_mnist(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    lines = subprocess.run(["make", "-n", "-o", str(venv / ".installed"), "demo",
                            f"VENV={venv}"], cwd=REPO, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    fetches = [line.split("symvae.data fetch", 1)[1].split() for line in lines
               if "symvae.data fetch" in line]
    assert fetches == [["mnist"]]
