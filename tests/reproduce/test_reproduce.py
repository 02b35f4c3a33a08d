"""python -m symvae reproduce: presets, the dry run, the table, the executors, resuming."""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from symvae.reproduce import grid
from symvae.reproduce import runner as reproduce
from symvae.reproduce.grid import build_rows
from symvae.reproduce.report import markdown, summarize
from symvae.reproduce.stages import STAGES, Options, stage_key, write_state

ROW_FILES = ("row.json", "fid_results.json")


def run_main(*argv: str) -> int:
    return reproduce.main(list(argv))


def error_line(capsys, *argv: str) -> str:
    """Run with bad flags: exactly one `error:` line on stderr and exit code 2."""
    with pytest.raises(SystemExit) as exc:
        run_main(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def snapshot(out: Path) -> dict[str, object]:
    """Every row's records and the modification times of its model and grid files."""
    snap: dict[str, object] = {}
    for path in sorted(out.glob("*/*")):
        if path.name in ROW_FILES:
            snap[str(path)] = path.read_text()
    for path in sorted(out.glob("*/models/*.pt")) + sorted(out.glob("*/images/*.png")):
        snap[str(path)] = path.stat().st_mtime_ns
    return snap


def row_state(out: Path, name: str) -> dict:
    return json.loads((out / name / "row.json").read_text())


def log_count(path: Path) -> int:
    """The largest `count:` in a training log so far."""
    if not path.is_file():
        return 0
    return max((int(c) for c in re.findall(r"count: (\d+)", path.read_text())), default=0)


# --- presets and rows ------------------------------------------------------------------------
def test_readme_and_paper_presets_are_the_seeds_and_the_papers_settings():
    readme = build_rows("readme")
    assert [(r.experiment, r.method) for r in readme] == [
        (e, m) for e in ("mnist-ladder", "mnist-reverse", "fmnist-ladder") for m in ("sym", "elbo")]
    for r in readme:
        s = r.sizes
        assert (s.niterations, s.bs, s.stepsize, s.nz0, s.nz1, s.n, s.chain_steps, s.fid_dims) \
            == (200_000, 1024, 1e-4, 30, 100, 70_000, 1000, 2048)
    paper = {r.experiment: r.sizes for r in build_rows("paper")}
    assert paper["mnist-ladder"].niterations == paper["mnist-reverse"].niterations == 1_000_000
    assert (paper["fmnist-ladder"].niterations, paper["fmnist-ladder"].nz0,
            paper["fmnist-ladder"].nz1) == (280_000, 50, 200)
    assert paper["mnist-ladder"].nz0 == 30


def test_rows_multiply_over_seeds_and_take_overrides():
    rows = build_rows("quick", seeds=(0, 1, 2), overrides={"niterations": 7, "n": 50})
    assert [r.name for r in rows] == [f"mnist-ladder-{m}-s{s}" for m in ("sym", "elbo")
                                      for s in (0, 1, 2)]
    assert {r.sizes.niterations for r in rows} == {7} and {r.sizes.n for r in rows} == {50}
    assert {r.sizes.bs for r in rows} == {64}  # the preset's own where not overridden


def test_estimate_counts_the_data_statistics_once_per_data_set():
    rows = build_rows("quick")
    est = grid.estimate_seconds(rows, gpu=False)
    sym, elbo = (est[r.name]["fid"] for r in rows)
    assert sym - elbo == pytest.approx(rows[0].sizes.n / grid.CPU_INCEPTION)
    assert est[rows[0].name]["train"] == pytest.approx(5000 * 0.192)


def test_quick_dry_run_prints_the_commands_and_about_an_hour(tmp_path: Path, capsys):
    assert run_main("--preset", "quick", "--dry-run", "--device", "cpu",
                    "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "python main_sym.py --call_prefix sym-s0 --nz0 30 --nz1 100 --seed 0 --device cpu " \
        "--stepsize 0.0001 --bs 64 --niterations 5000" in out
    assert "python main_elbo.py --call_prefix elbo-s0" in out
    assert "python -m symvae fid --call_prefix elbo-s0 --nz0 30 --nz1 100 --seed 0 --device " \
        "cpu --n 1000 --chain_steps 100" in out
    minutes = int(re.search(r"estimated total: (\d+) min", out).group(1))
    assert 45 <= minutes <= 70
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_smoke_dry_run_prints_fid_commands_that_run_as_printed(tmp_path: Path, capsys):
    from symvae.evaluate import fid
    assert run_main("--preset", "smoke", "--dry-run", "--device", "cpu",
                    "--out", str(tmp_path)) == 0
    lines = [ln.split("#")[0].split("python -m symvae fid ")[1]
             for ln in capsys.readouterr().out.splitlines() if "python -m symvae fid" in ln]
    assert len(lines) == 6
    for line in lines:
        args = fid.parser().parse_args(shlex.split(line))
        assert (args.dims, args.n, args.chain_steps) == (64, 10, 2)


def test_no_preset_on_a_cpu_asks_for_one_and_names_those_that_fit(tmp_path: Path, capsys):
    line = error_line(capsys, "--device", "cpu", "--out", str(tmp_path))
    assert "no --preset given" in line and "readme" in line and "--yes" in line
    hours = float(re.search(r"estimated at ([\d.]+) h on this CPU", line).group(1))
    assert hours > 1000  # the readme preset's six rows at the CPU rates
    fit = re.search(r"within 4 h here: ([^)]*)\)", line).group(1)
    assert [part.split(" ~")[0] for part in fit.split(", ")] == ["quick", "smoke"]
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_no_preset_runs_the_default_where_its_estimate_is_short(tmp_path: Path):
    def check(*argv: str) -> None:
        args = reproduce.parser().parse_args([*argv, "--out", str(tmp_path)])
        opts = Options(out=tmp_path / reproduce.DEFAULT_PRESET)
        reproduce.check_default_preset(args, opts, lambda name: build_rows(
            name, None, grid.METHODS, (0,), reproduce.check_args(args)))
    check("--executor", "slurm")  # one GPU job per row: the longest row, well under 4 h
    check("--device", "cpu", "--niterations", "100", "--n", "100", "--chain_steps", "10")
    with pytest.raises(SystemExit):
        check("--device", "cpu", "--niterations", "20000")


@pytest.mark.parametrize("argv, words", [
    (("--niterations", "0"), "--niterations 0"),
    (("--stepsize", "2"), "--stepsize 2"),
    (("--fid_dims", "100"), "--fid_dims 100"),
    (("--seeds", "-1"), "--seeds -1"),
    (("--partition", "gpu"), "--partition is for --executor slurm"),
    (("--executor", "slurm", "--timeout_min", "0"), "--timeout_min 0"),
])
def test_bad_flags_give_one_error_line(tmp_path: Path, capsys, argv, words):
    line = error_line(capsys, "--preset", "smoke", "--out", str(tmp_path), *argv)
    assert words in line


def test_a_damaged_row_record_is_named_with_the_fix(tmp_path: Path, capsys):
    (tmp_path / "smoke" / "mnist-ladder-sym-s0").mkdir(parents=True)
    (tmp_path / "smoke" / "mnist-ladder-sym-s0" / "row.json").write_text("{not json")
    line = error_line(capsys, "--preset", "smoke", "--experiments", "mnist-ladder",
                      "--out", str(tmp_path))
    assert "mnist-ladder-sym-s0/row.json" in line and "delete it" in line


# --- the table ---------------------------------------------------------------------------------
def test_table_gives_mean_and_sd_over_finished_seeds(tmp_path: Path):
    opts = Options(out=tmp_path)
    rows = build_rows("smoke", ("mnist-ladder",), ("sym",), (0, 1, 2))
    for row, fids in zip(rows[:2], ((2.0, 4.0), (4.0, 8.0)), strict=True):
        stages = {s: {"key": stage_key(row, s, opts), "seconds": 1.0} for s in STAGES}
        stages["train"].update(iterations=8, train_seconds=10.0, qmi0=0.1, qmi1=0.3,
                               device="cpu", commit="abc")
        stages["fid"].update(random_code_fid=fids[0], limiting_fid=fids[1])
        (tmp_path / row.name).mkdir()
        write_state(tmp_path / row.name, {"row": row.as_dict(), "stages": stages})
    (line,) = summarize(rows, opts)
    assert line["seeds_done"] == [0, 1] and line["pending"] == ["train"]
    assert line["random_code_fid"] == pytest.approx((3.0, 2 ** 0.5))
    assert line["limiting_fid"] == pytest.approx((6.0, 8 ** 0.5))
    assert line["wall_seconds"] == pytest.approx((12.0, 0.0))
    assert line["authors_figures"] == {"random_code_fid": 1.6543, "limiting_fid": 4.1015}


def table_lines(tmp_path: Path, preset: str, fids: list[float]) -> list[dict]:
    """summarize() over one finished seed per row of `preset`, with the given FIDs in turn."""
    opts = Options(out=tmp_path / preset)
    rows = build_rows(preset)
    for row, fid_value in zip(rows, fids):
        stages = {s: {"key": stage_key(row, s, opts), "seconds": 1.0} for s in STAGES}
        stages["train"].update(iterations=8, train_seconds=1.0, qmi0=0.1, qmi1=0.3,
                               device="cpu", commit="abc")
        stages["fid"].update(random_code_fid=fid_value, limiting_fid=2 * fid_value)
        (opts.out / row.name).mkdir(parents=True)
        write_state(opts.out / row.name, {"row": row.as_dict(), "stages": stages})
    return summarize(rows, opts)


def tick_labels_overlap(fig) -> bool:
    """Whether any two visible x tick labels of an axis overlap, once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels(which="both")
                 if t.get_visible() and t.get_text()]
        boxes.sort(key=lambda b: b.x0)
        if any(a.x1 > b.x0 for a, b in itertools.pairwise(boxes)):
            return True
    return False


def test_smoke_figure_warns_and_shows_no_authors_figures(tmp_path: Path):
    from symvae.reproduce.report import figure
    fig = figure("smoke", table_lines(tmp_path, "smoke", [5.0, 6.0, 7.0, 8.0, 9.0, 11.0]))
    assert "compare with nothing" in fig.get_suptitle()
    assert all(ax.get_legend() is None for ax in fig.axes)  # no "authors' figure" markers
    assert not tick_labels_overlap(fig)
    fig = figure("quick", table_lines(tmp_path, "quick", [200.0, 33.0]))
    assert "vs the authors'" in fig.get_suptitle() and fig.axes[0].get_legend() is not None
    assert not tick_labels_overlap(fig)


def test_table_gives_kid_precision_and_recall_beside_the_fids(tmp_path: Path):
    opts = Options(out=tmp_path)
    rows = build_rows("smoke", ("mnist-ladder",), ("sym", "elbo"), (0, 1))
    for row in rows[:3]:  # both seeds of sym, one of elbo
        stages = {s: {"key": stage_key(row, s, opts), "seconds": 1.0} for s in STAGES}
        stages["train"].update(iterations=8, train_seconds=10.0, device="cpu", commit="abc")
        k = 0.01 * (row.seed + 1)
        stages["fid"].update(random_code_fid=2.0, limiting_fid=3.0, metric_n=20,
                             **{f"{s}_{f}": v for s in ("random_code", "limiting")
                                for f, v in (("kid", k), ("kid_se", 0.002),
                                             ("precision", 0.5 + k), ("recall", 0.25))})
        (tmp_path / row.name).mkdir()
        write_state(tmp_path / row.name, {"row": row.as_dict(), "stages": stages})
    lines = summarize(rows, opts)
    assert lines[0]["limiting_kid"] == pytest.approx((0.015, 0.5 ** 0.5 * 0.01))
    text = markdown("smoke", lines, "cmd")
    assert ("| mnist-ladder | symmetric | 0.0150 ± 0.0071 | 0.0150 ± 0.0071 "
            "| 0.515 ± 0.007") in text
    assert "| 0.0100 ± 0.0020 (se) | 0.0100 ± 0.0020 (se) | 0.510 | 0.250 |" in text


# --- SLURM without a cluster: the script submitit writes, and no double submission -------------
def fake_slurm(bin_dir: Path) -> Path:
    """`sbatch` that keeps the script it is given and answers as SLURM does; `srun` unused."""
    bin_dir.mkdir()
    kept = bin_dir / "submitted"
    kept.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {kept} | wc -l)\ncp "$1" {kept}/script$n.sh\n'
        'echo "Submitted batch job $((4242 + n))"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for name in ("sbatch", "srun"):
        (bin_dir / name).chmod(0o755)
    return kept


def test_slurm_array_script_passes_the_flags_and_rows_are_not_resubmitted(
        tmp_path: Path, monkeypatch, capsys):
    kept = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    flags = ("--preset", "smoke", "--out", str(tmp_path / "results"), "--executor", "slurm",
             "--partition", "gpuq", "--timeout_min", "90", "--gpus_per_node", "1",
             "--array_parallelism", "3")
    assert run_main(*flags) == 0
    (script,) = kept.iterdir()
    text = script.read_text()
    for line in ("--partition=gpuq", "--time=90", "--gpus-per-node=1", "--array=0-5%3",
                 "--signal=USR2@90", "--job-name=symvae-smoke"):
        assert f"#SBATCH {line}\n" in text
    assert "submitit.core._submit" in text
    jobs = json.loads((tmp_path / "results" / "smoke" / "submitit" / "jobs.json").read_text())
    assert jobs["fmnist-ladder-elbo-s0"] == "4242_5" and len(jobs) == 6
    capsys.readouterr()
    assert run_main(*flags) == 0  # the jobs have not ended: nothing submitted again
    assert len(list(kept.iterdir())) == 1
    assert capsys.readouterr().out.count("has not ended; not resubmitted") == 6
    assert run_main(*flags, "--resubmit") == 0
    assert len(list(kept.iterdir())) == 2


def test_slurm_without_sbatch_says_where_to_run(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    line = error_line(capsys, "--preset", "smoke", "--out", str(tmp_path), "--executor", "slurm")
    assert "no `sbatch`" in line and "--executor local" in line


def test_checkpoint_hook_requeues_the_same_row(tmp_path: Path):
    from symvae.reproduce.cluster import RowJob
    job, row, opts = RowJob(), build_rows("smoke")[0], Options(out=tmp_path)
    delayed = job.checkpoint(row, opts)
    assert isinstance(delayed.function, RowJob) and delayed.args == (row, opts)
    assert job.requeued  # a requeue exit inside a stage now passes through to submitit


# --- real runs of the smoke grid (Inception's first block, synthetic data) -----------------------
def smoke_flags(data_root: Path, out: Path, *more: str) -> tuple[str, ...]:
    return ("--preset", "smoke", "--data_root", str(data_root), "--out", str(out),
            "--no_progress", *more)


def check_table(out: Path, n_rows: int) -> None:
    table = json.loads((out / "table.json").read_text())
    assert len(table["rows"]) == n_rows
    for line in table["rows"]:
        assert line["seeds_done"] == [0] and line["iterations"] == ["8"]
        assert line["random_code_fid"][0] >= 0 and line["limiting_fid"][0] >= 0
    md = (out / "table.md").read_text()
    assert md.count("| 1/1 |") == n_rows and "not comparable" in md
    assert (out / "table.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_smoke_grid_locally_then_a_second_run_redoes_nothing(data_root: Path, tmp_path: Path,
                                                             capsys):
    out = tmp_path / "results"
    assert run_main(*smoke_flags(data_root, out)) == 0
    check_table(out / "smoke", 6)
    before = snapshot(out / "smoke")
    capsys.readouterr()
    assert run_main(*smoke_flags(data_root, out)) == 0
    said = capsys.readouterr().out
    assert said.count(" done\n") == 18 and ": train:" not in said
    assert snapshot(out / "smoke") == before
    assert run_main(*smoke_flags(data_root, out, "--dry-run")) == 0
    said = capsys.readouterr().out
    assert said.count("[done, skipped]") == 18 and "estimated total: 0 s" in said
    # a changed FID size redoes that stage only
    assert run_main(*smoke_flags(data_root, out, "--experiments", "mnist-ladder",
                                 "--methods", "sym", "--n", "12")) == 0
    state = row_state(out / "smoke", "mnist-ladder-sym-s0")
    assert state["stages"]["fid"]["n"] == 12
    assert all(state["stages"][s] == json.loads(before[str(
        out / "smoke" / "mnist-ladder-sym-s0" / "row.json")])["stages"][s]
        for s in ("train", "generate"))


@pytest.mark.slow
def test_smoke_grid_through_submitits_local_executor(data_root: Path, tmp_path: Path,
                                                      monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job processes import this symvae
    out = tmp_path / "results"
    assert run_main(*smoke_flags(data_root, out, "--executor", "submitit-local")) == 0
    check_table(out / "smoke", 6)
    logs = list((out / "smoke" / "submitit").glob("*_log.out"))
    assert len(logs) == 6  # six separate job processes


@pytest.mark.slow
def test_killed_during_a_row_the_rerun_redoes_only_the_interrupted_stage(
        data_root: Path, tmp_path: Path):
    out = tmp_path / "results"
    flags = smoke_flags(data_root, out, "--experiments", "mnist-ladder", "--niterations", "60",
                        "--save_period", "10", "--log_period", "10")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "symvae", "reproduce", *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elbo_log = out / "smoke" / "mnist-ladder-elbo-s0" / "logs" / "log-elbo-s0.txt"
    deadline = time.time() + 600
    while log_count(elbo_log) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert log_count(elbo_log) < 60, "the row finished before it could be killed"
    sym = row_state(out / "smoke", "mnist-ladder-sym-s0")
    assert set(sym["stages"]) == set(STAGES)
    assert "train" not in row_state(out / "smoke", "mnist-ladder-elbo-s0")["stages"]

    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    assert "mnist-ladder-sym-s0: train done" in done.stdout
    assert row_state(out / "smoke", "mnist-ladder-sym-s0") == sym  # nothing of it redone
    train = row_state(out / "smoke", "mnist-ladder-elbo-s0")["stages"]["train"]
    assert train["resumed_from"] >= 10 and train["iterations"] == 60
    assert "# resumed from" in elbo_log.read_text()
    assert json.loads((out / "smoke" / "table.json").read_text())["rows"][1]["seeds_done"] == [0]


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_resumes_from_its_checkpoint(
        data_root: Path, tmp_path: Path, monkeypatch):
    from symvae.reproduce import cluster
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    opts = Options(out=tmp_path / "smoke", data_root=str(data_root), progress=False)
    (row,) = build_rows("smoke", ("mnist-ladder",), ("sym",), overrides={
        "niterations": 60, "save_period": 10, "log_period": 10})
    folder = opts.out / "submitit"
    executor = cluster.make_executor("submitit-local", folder, "symvae-test", timeout_min=30,
                                     gpus_per_node=0)
    (job,) = cluster.submit(executor, [row], opts, folder)
    log = opts.out / row.name / "logs" / f"log-{row.tag}.txt"
    deadline = time.time() + 600
    while log_count(log) < 20 and not job.done() and time.time() < deadline:
        time.sleep(0.05)
    assert log_count(log) < 60, "the row finished before it could be preempted"
    # SLURM's preemption notice (USR2, as submitit's sbatch --signal asks) to the job's task,
    # the child of submitit's local controller process
    pid = job._process.pid
    (task,) = map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    os.kill(task, signal.SIGUSR2)
    state = job.result()
    assert state["stages"]["train"]["resumed_from"] >= 10
    assert state["stages"]["train"]["iterations"] == 60 and set(state["stages"]) == set(STAGES)
    assert "# resumed from" in log.read_text()
    assert "Requeued job" in "".join(p.read_text() for p in folder.glob("*_log.*"))


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_runner_stops_its_submitit_local_jobs(data_root: Path, tmp_path: Path,
                                                           stop: signal.Signals):
    """SIGTERM or SIGINT to the runner alone (not its process group): one line, the
    conventional status, and no job process is left training."""
    out = tmp_path / "results"
    flags = smoke_flags(data_root, out, "--experiments", "mnist-ladder", "--methods", "sym",
                        "--executor", "submitit-local", "--niterations", "100000",
                        "--save_period", "10", "--log_period", "10")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # Ctrl-C as at a terminal, even where pytest itself was started in the background (`cmd &`
    # in a script ignores SIGINT, and children inherit that; a caught signal they do not):
    # conftest puts this process's handler back after the test
    signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen([sys.executable, "-m", "symvae", "reproduce", *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "smoke" / "mnist-ladder-sym-s0" / "logs" / "log-sym-s0.txt"
    deadline = time.time() + 600
    while log_count(log) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    jobs = descendants(proc.pid)
    assert jobs, "no job processes started"
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=300)
    left = [p for p in jobs if alive(p)]
    for pid in left:  # do not leave them behind when the check fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"job processes {left} outlived the runner"
    assert proc.returncode == 128 + stop, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{stop.name}: stopped, and the rows' jobs with it"), err
    assert "# stopped by SIGTERM" in log.read_text()  # the job saved its checkpoint first
