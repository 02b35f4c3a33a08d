"""Run the README's documented commands, in the README's order, at tiny sizes.

    python scripts/readme_commands.py            # run them (from the repository root)
    python scripts/readme_commands.py --list     # print them as they would run

Every command line of the README's ```bash blocks is either run, with flags appended that make
it tiny (argparse takes a flag's last value), or skipped for a stated reason; a line this
script does not know stops it, so a newly documented command cannot go untried. `cd` lines
change the folder the following commands run in, as they do for a reader. The commands write
where the README says they write (models/, logs/, images/, generated_data/, fid_results.*,
results/): what a newcomer's tree holds before `make test`. .ci/run runs this sequence.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# Appended to each program's documented flags. FIDs on the 64 features of Inception's first
# block: quick, and the commands' paths through the code are the same as with 2048.
TINY_REPRODUCE = ["--niterations", "4", "--bs", "8", "--nz0", "4", "--nz1", "8", "--n", "10",
                  "--chain_steps", "2", "--fid_bs", "10", "--feature_bs", "10",
                  "--fid_dims", "64", "--save_period", "2", "--log_period", "2", "--no_progress"]
TINY = {
    "main_sym.py": ["--niterations", "20", "--bs", "16", "--save_period", "10", "--no_progress"],
    "main_elbo.py": ["--niterations", "20", "--bs", "16", "--save_period", "10",
                     "--no_progress"],
    "generate.py": ["--chain_steps", "5"],
    "generate_data.py": ["--n", "64", "--chain_steps", "2", "--bs", "64"],
    "-m pytorch_fid": ["--dims", "64", "--num-workers", "0"],
    "symvae fid": ["--n", "64", "--chain_steps", "2", "--dims", "64", "--no_progress"],
    "symvae reproduce": TINY_REPRODUCE,
    "-m symvae.data": [],  # the fetch: already tiny
}
# Lines not run, and why; the first key a line starts with gives the reason.
SKIPPED = {
    "make reproduce": "the make form of the `symvae reproduce` line run before it",
    "make ": "a make target: .ci/run runs `make demo` before and `make test` after",
}


def readme_lines(text: str) -> list[str]:
    """The command lines of the ```bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def program_of(argv: list[str]) -> str | None:
    """The key of TINY a `python ...` or `symvae COMMAND ...` line runs, or None."""
    if argv[0] not in ("python", "symvae") or len(argv) < 2:
        return None
    if argv[0] == "symvae":
        key = f"symvae {argv[1]}"
    else:
        key = f"-m {argv[2]}" if argv[1] == "-m" and len(argv) > 2 else argv[1]
    return key if key in TINY else None


def executable(argv: list[str], python: str) -> list[str]:
    """The process to start for a README line: `python` is the given interpreter, and
    `symvae` the console script beside it (its venv's bin/), so PATH need not hold it."""
    if argv[0] == "symvae":
        return [str(Path(python).parent / "symvae"), *argv[1:]]
    return [python, *argv[1:]]


def plan(text: str) -> list[tuple[str, list[str] | None, str]]:
    """(line, argv to run or None, note) per command line; ValueError names an unknown one."""
    steps = []
    for line in readme_lines(text):
        skip = next((why for start, why in SKIPPED.items() if line.startswith(start)), None)
        if skip:
            steps.append((line, None, f"skipped: {skip}"))
            continue
        argv = shlex.split(line)
        if argv[0] == "cd" and len(argv) == 2:
            steps.append((line, argv, "folder"))
            continue
        key = program_of(argv)
        if key is None:
            raise ValueError(f"README command {line!r}: not known to {Path(__file__).name}; "
                             "add its tiny sizes to TINY, or a reason to SKIPPED")
        tiny = list(TINY[key])
        if key == "symvae reproduce" and "--executor" in argv and \
                argv[argv.index("--executor") + 1] == "slurm":
            tiny.append("--dry-run")  # no cluster here: what it would submit
        if key == "-m pytorch_fid":  # options before the two paths it takes
            paths = [a for a in argv[3:] if not a.startswith("-")][-2:]
            options = [a for a in argv[3:] if a not in paths]
            argv = argv[:3] + override(options, tiny) + paths
        else:
            argv = override(argv, tiny)
        steps.append((line, argv, "run"))
    return steps


def override(argv: list[str], tiny: list[str]) -> list[str]:
    """`argv` with each flag of `tiny` set to tiny's value: in place where given, else added."""
    argv = list(argv)
    i = 0
    while i < len(tiny):
        flag = tiny[i]
        has_value = i + 1 < len(tiny) and not tiny[i + 1].startswith("--")
        if flag in argv:
            if has_value:
                argv[argv.index(flag) + 1] = tiny[i + 1]
        else:
            argv += tiny[i:i + 1 + has_value]
        i += 1 + has_value
    return argv


def run(steps, python: str) -> int:
    script = Path(python).parent / "symvae"
    if any(argv and argv[0] == "symvae" for _, argv, _ in steps) and not script.is_file():
        print(f"error: no console script {script}: install symvae into that environment "
              "(make setup, or pip install -e .)", file=sys.stderr)
        return 2
    folder = REPO
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for line, argv, note in steps:
        if argv is None:
            print(f"# {line}\n#   {note}", flush=True)
            continue
        if note == "folder":
            folder = (folder / argv[1]).resolve()
            print(f"$ {line}", flush=True)
            continue
        print(f"$ (in {folder.relative_to(REPO) or '.'}) {shlex.join(argv)}", flush=True)
        began = time.time()
        proc = subprocess.run(executable(argv, python), cwd=folder, env=env, check=False)
        print(f"#   exit {proc.returncode}, {time.time() - began:.0f} s", flush=True)
        if proc.returncode:
            print(f"error: README command {line!r} failed (exit {proc.returncode}) at tiny "
                  f"sizes: {shlex.join(argv)}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the commands, run nothing")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter for `python`; `symvae` is the console script beside it")
    args = p.parse_args(argv)
    try:
        steps = plan(README.read_text())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.list:
        for line, cmd, note in steps:
            print(f"{line}\n    -> {shlex.join(cmd) if note == 'run' else note}")
        return 0
    return run(steps, args.python)


if __name__ == "__main__":
    raise SystemExit(main())
