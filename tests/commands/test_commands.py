"""The commands as a user meets them: --help shows the defaults, the README's commands run on the
device at hand as printed, and a short run still logs its figures."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from symvae.cli import train_parser
from symvae.evaluate import export, fid, generate
from symvae.experiment import load_model_class
from symvae.learn import train
from symvae.reproduce import runner as reproduce

HVAE = load_model_class(REPO / "mnist-ladder")
README = REPO / "README.md"


def flag_help(text: str, flag: str) -> str:
    """The help of one flag in a --help text, whitespace collapsed."""
    parts = " ".join(text.split()).split(" --")
    found = [p for p in parts if p.startswith(flag.lstrip("-") + " ") or p == flag.lstrip("-")]
    assert found, f"{flag} not in the help"
    return found[0]


def printed_help(capsys, command) -> str:
    """What `command --help` prints; it exits 0."""
    with pytest.raises(SystemExit) as stop:
        command(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name, command, defaults", [
    ("main_sym.py", lambda a: train_parser("sym").parse_args(a),
     {"--bs": "1024", "--stepsize": "0.0001", "--log_period": "100", "--save_period": "1000",
      "--nz0": "30", "--nz1": "100", "--device": "auto", "--nan_policy": "stop"}),
    ("generate.py", lambda a: generate.main(HVAE, a), {"--chain_steps": "1000", "--n": "40"}),
    ("generate_data.py", lambda a: export.main(HVAE, a),
     {"--chain_steps": "1000", "--bs": "1000", "--n": "70,000"}),
    ("python -m symvae fid", fid.main, {"--chain_steps": "1000", "--feature_bs": "50"}),
    ("python -m symvae reproduce", reproduce.main, {"--preset": "readme", "--executor": "local"}),
])
def test_help_shows_the_defaults(capsys, name, command, defaults):
    text = printed_help(capsys, command)
    for flag, value in defaults.items():
        assert re.search(rf"default:? {re.escape(value)}\b", flag_help(text, flag)), (name, flag)
    assert "(default: None)" not in text and "(default: False)" not in text


def readme_commands(program: str) -> list[list[str]]:
    """The command lines of the README's code blocks that start with `program`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in
             block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(program)]


def test_readme_pytorch_fid_commands_choose_the_device_at_hand():
    from pytorch_fid.fid_score import parser  # pytorch-fid's own command line
    commands = readme_commands("python -m pytorch_fid")
    assert len(commands) >= 3
    for argv in commands:
        # no --device: pytorch-fid takes CUDA where there is one, else the CPU
        assert parser.parse_args(argv[3:]).device is None, argv


def test_readme_says_how_long_generate_takes_and_how_to_shorten_it():
    text = " ".join(README.read_text().split())
    section = text.split("### Generating images")[1].split("###")[0]
    assert re.search(r"\d+ min", section) and "--chain_steps 100" in section


def log_counts(folder: Path, tag: str) -> list[int]:
    lines = (folder / "logs" / f"log-{tag}.txt").read_text().splitlines()
    return [int(re.search(r"count: (\d+)", line).group(1)) for line in lines
            if not line.startswith("#")]


def test_a_run_shorter_than_log_period_logs_its_last_iteration(experiment_copy, data_root,
                                                                monkeypatch):
    folder = experiment_copy("mnist-ladder")
    monkeypatch.chdir(folder)
    small = ["--nz0", "4", "--nz1", "8", "--bs", "8", "--device", "cpu", "--seed", "0",
             "--no_progress", "--data_root", str(data_root)]
    assert train.main(HVAE, "sym", [*small, "--call_prefix", "a", "--niterations", "5"]) == 0
    assert log_counts(folder, "a") == [5]  # --log_period 100: the end's line only
    assert train.main(HVAE, "elbo", [*small, "--call_prefix", "b", "--niterations", "7",
                                     "--log_period", "3"]) == 0
    assert log_counts(folder, "b") == [3, 6, 7]
    assert train.main(HVAE, "elbo", [*small, "--call_prefix", "b", "--load_prefix", "b",
                                     "--niterations", "9", "--log_period", "3"]) == 0
    assert log_counts(folder, "b") == [3, 6, 7, 9]


def test_data_help_shows_the_fetch_verb_the_readme_uses(capsys):
    from symvae.data.fetch import main as fetch_main
    usage = printed_help(capsys, fetch_main).splitlines()[0]
    assert usage.startswith("usage: python -m symvae.data fetch ")
    assert "python -m symvae.data fetch" in README.read_text()


def test_few_images_get_our_note_and_the_progress_counts_image_steps(experiment_copy, data_root,
                                                                     monkeypatch, capsys):
    from test_fid import projection, save_untrained
    folder = experiment_copy("mnist-ladder")
    save_untrained(folder, "s")
    monkeypatch.chdir(folder)
    common = ["--call_prefix", "s", "--nz0", "4", "--nz1", "8", "--chain_steps", "1",
              "--seed", "0", "--data_root", str(data_root), "--device", "cpu"]
    assert fid.main([*common, "--n", "5", "--no_progress"], features=projection(6)) == 0
    assert "note: --n 5 images for 6 features: the covariance matrices are singular" in \
        capsys.readouterr().err
    assert fid.main([*common, "--n", "7", "--no_progress"], features=projection(6)) == 0
    assert "note:" not in capsys.readouterr().err
    assert export.main(HVAE, [*common, "--n", "4", "--mode", "t", "--workers", "0"]) == 0
    assert "img-step" in capsys.readouterr().err
    # an early Inception block's features keep data statistics of their own
    assert fid.main([*common, "--n", "7", "--dims", "64", "--no_progress"],
                    features=projection(6)) == 0
    cached = sorted(p.name for p in (data_root / "fid_stats").glob("*-n7-*.npz"))
    assert cached == ["MNIST-bin0.4375-n7-dims64.npz", "MNIST-bin0.4375-n7-pool3.npz"]
